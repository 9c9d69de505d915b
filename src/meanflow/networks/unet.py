"""EDM's ``SongUNet`` ("DDPM++", Song et al. 2021; Karras et al. 2022) with tangent mode.

MeanFlow's CIFAR-10 network: 128 channels, multipliers ``[2, 2, 2]``, 4 residual blocks per
level, self-attention at 16x16, dropout 0.2, about 55M parameters. As in the official MeanFlow
PyTorch port, ``t`` and ``h`` each get their own sinusoidal features of the raw value
(``n = model_channels * channel_mult_noise`` features each); the two are concatenated (plus optional
class and augmentation-label embeddings) and mapped by a 2-layer MLP to the embedding ``emb``::

    emb = silu(W_1 silu(W_0 ([pos(t), pos(h)] + E_y(y) + W_aug a [+ E_g(g)])))
    pos(t) = [cos(w_i t), sin(w_i t)]    (embedding_order="cos-sin", EDM's order)
    pos(t) = [sin(w_i t), cos(w_i t)]    (embedding_order="sin-cos", the official MeanFlow order)
    E_g(g) = E_w(1 - 1/w) + E_a(t_min) + E_b(t_max)     # guidance_cond=True only

The official MeanFlow CIFAR-10 network (Gsunshine/py-meanflow) is this class with
``channel_mult_noise=2, embedding_order="sin-cos", resample_filter=(1, 3, 3, 1), augment_dim=6``
(55,932,419 parameters); see :func:`unet_meanflow`. Its up/down-sampling uses EDM's separable FIR
filter ``f f^T / (sum f)^2`` with ``f = [1, 3, 3, 1]`` instead of the 2x2 box / nearest neighbour.

The optional guidance term (``guidance_cond=True``, for improved MeanFlow) embeds the keyword input
``guidance = [w, t_min, t_max]`` (``[B, 3]``: guidance scale ``w >= 1`` and interval) exactly as the
MLP does (:mod:`meanflow.networks.mlp`): one :class:`TimestepEmbedder` each for ``1 - 1/w``,
``t_min`` and ``t_max`` (``1 - 1/w`` as in the official iMF DiT), summed and added to the input of
the embedding MLP beside the class embedding. These inputs have no tangent: in tangent mode the
derivative is along ``(z, t, h)`` only.

The residual blocks (:class:`~meanflow.networks.unet_block.UNetBlock`) live in ``unet_block.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.networks import layers as L
from meanflow.networks.base import TangentNet
from meanflow.networks.embeddings import LabelEmbedder, LogVarianceHead, TimestepEmbedder, sinusoidal
from meanflow.networks.unet_block import ZERO_GAIN, UNetBlock, xavier

EMBEDDING_ORDERS = ("cos-sin", "sin-cos")
"""Orders of the sinusoidal time features: EDM's ``[cos, sin]`` and the official MeanFlow ``[sin, cos]``."""


def _check_options(img_resolution: int, model_channels: int, channel_mult: Sequence[int], num_blocks: int,
                   dropout: float, num_classes: int, augment_dim: int, guidance_cond: bool,
                   channel_mult_noise: int, embedding_order: str, resample_filter: Sequence[int]) -> tuple:
    """UserError for an invalid :class:`SongUNet` option; returns the resampling filter's taps."""
    levels = len(channel_mult)
    if levels < 1 or num_blocks < 1 or model_channels < 1:
        raise UserError("unet needs channel_mult non-empty, num_blocks >= 1, model_channels >= 1")
    if img_resolution < 1 or img_resolution % (2 ** (levels - 1)):
        raise UserError(
            f"unet img_resolution {img_resolution} is not divisible by 2^{levels - 1} "
            f"({levels} levels in channel_mult)"
        )
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"unet dropout must be in [0, 1), got {dropout}")
    if num_classes < 0 or augment_dim < 0:
        raise UserError("unet num_classes and augment_dim must be >= 0")
    if not isinstance(guidance_cond, bool):
        raise UserError(f"unet guidance_cond must be true or false, got {guidance_cond!r}")
    if not isinstance(channel_mult_noise, int) or channel_mult_noise < 1:
        raise UserError(f"unet channel_mult_noise must be an integer >= 1, got {channel_mult_noise!r}")
    if embedding_order not in EMBEDDING_ORDERS:
        raise UserError(f"unet embedding_order must be one of {', '.join(EMBEDDING_ORDERS)}, "
                        f"got {embedding_order!r}")
    taps = tuple(resample_filter)
    if len(taps) < 2 or len(taps) % 2 or any(not isinstance(v, (int, float)) or v < 0 for v in taps) \
            or sum(taps) <= 0:
        raise UserError(f"unet resample_filter must be an even number (>= 2) of non-negative taps, "
                        f"e.g. [1, 1] or [1, 3, 3, 1], got {list(resample_filter)!r}")
    return taps


class SongUNet(TangentNet):
    """DDPM++ U-Net with the MeanFlow signature ``net(z, t, h, y, augment_labels=None, guidance=None)``.

    Args:
        img_resolution: input height = width; divisible by ``2^(len(channel_mult) - 1)``.
        in_channels: input (and output) channels.
        model_channels: base channel count.
        channel_mult: channel multiplier per resolution level.
        num_blocks: residual blocks per level.
        attn_resolutions: resolutions with self-attention.
        dropout: dropout probability inside the residual blocks.
        num_classes: 0 = unconditional; else ids ``[0, num_classes]`` with ``num_classes`` = null.
        augment_dim: size of EDM augmentation labels (0 = none; EDM's pipe uses 9).
        channel_mult_emb: embedding width = ``model_channels * channel_mult_emb``.
        adaptive_scale: scale/shift conditioning in the blocks (EDM's ``adaptive_scale``);
            DDPM++ uses an additive bias (False).
        out_channels: output channels (default ``in_channels``).
        guidance_cond: also condition on ``guidance = [w, t_min, t_max]`` ``[B, 3]`` (a required
            keyword input then; see the module docstring). False builds exactly the network of before
            (same parameters, order and initial values).
        channel_mult_noise: sinusoidal features per time input = ``model_channels *
            channel_mult_noise`` (EDM's option; the official MeanFlow net uses 2).
        embedding_order: ``"cos-sin"`` (EDM) or ``"sin-cos"`` (official MeanFlow) feature order.
        resample_filter: EDM's 1-D resampling filter of the up/down blocks: ``(1, 1)`` (DDPM++, box /
            nearest) or e.g. ``(1, 3, 3, 1)`` (official MeanFlow). The defaults of these three build
            exactly the network of before.
        log_variance: add the zero-initialised head ``logvar(t, h) -> [B]`` of the adaptive weightings
            (sCM, DMF; not part of ``forward``), created last so the other parameters are unchanged.
        decoupled_depth: 0, or Decoupled MeanFlow's split: the first ``k`` residual blocks in execution
            order (encoder, middle, decoder; ``num_blocks_total`` of them) get the embedding of
            ``(t, h = 0)``, the rest that of ``(r = t - h, h = 0)``, through the same embedding MLP, so
            ``u(z, t, t)`` is the plain network's output (same parameters; no new ones).
    """

    fresh_parameters = ("logvar.",)

    def __init__(
        self,
        img_resolution: int = 32,
        in_channels: int = 3,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (2, 2, 2),
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.2,
        num_classes: int = 0,
        augment_dim: int = 0,
        channel_mult_emb: int = 4,
        adaptive_scale: bool = False,
        out_channels: int | None = None,
        guidance_cond: bool = False,
        channel_mult_noise: int = 1,
        embedding_order: str = "cos-sin",
        resample_filter: Sequence[int] = (1, 1),
        log_variance: bool = False,
        decoupled_depth: int = 0,
    ):
        super().__init__()
        taps = _check_options(img_resolution, model_channels, channel_mult, num_blocks, dropout,
                              num_classes, augment_dim, guidance_cond, channel_mult_noise, embedding_order,
                              resample_filter)
        self.img_resolution = img_resolution
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.num_classes = num_classes
        self.augment_dim = augment_dim
        self.guidance_cond = guidance_cond
        self.noise_channels = model_channels * channel_mult_noise
        self.embedding_order = embedding_order
        self.resample_filter = taps
        emb_channels = model_channels * channel_mult_emb
        # Modules are created in this order (it fixes the parameter order and the RNG draws of their
        # initialisation): embedding, encoder, decoder, output.
        self._build_embedding(model_channels, emb_channels)
        kw = dict(emb_channels=emb_channels, dropout=dropout, adaptive_scale=adaptive_scale,
                  resample_filter=taps)
        cout, skips = self._build_encoder(model_channels, channel_mult, num_blocks, attn_resolutions, kw)
        cout = self._build_decoder(cout, skips, model_channels, channel_mult, num_blocks, attn_resolutions,
                                   kw)
        self.out_norm = L.GroupNorm(cout, eps=1e-6)
        self.out_conv = xavier(nn.Conv2d(cout, self.out_channels, 3, padding=1), ZERO_GAIN)
        self.logvar = LogVarianceHead() if log_variance else None
        blocks = [*self.enc.values(), *self.dec.values()]
        self.num_blocks_total = sum(isinstance(m, UNetBlock) for m in blocks)
        if not isinstance(decoupled_depth, int) or isinstance(decoupled_depth, bool) \
                or not 0 <= decoupled_depth < self.num_blocks_total:
            raise UserError(f"unet decoupled_depth must be an integer in [0, {self.num_blocks_total}) (its "
                            f"residual blocks, encoder to decoder), got {decoupled_depth!r}")
        self.decoupled_depth = decoupled_depth

    def _build_embedding(self, model_channels: int, emb_channels: int) -> None:
        """The embedding MLP ``feat -> emb_channels -> emb_channels`` (``feat = 2 noise_channels``:
        ``[pos(t), pos(h)]``) and the optional class, augmentation-label and guidance embeddings added
        to its input."""
        feat = 2 * self.noise_channels  # [pos(t), pos(h)]
        self.map_label = LabelEmbedder(self.num_classes, feat) if self.num_classes > 0 else None
        self.map_augment = (
            xavier(nn.Linear(self.augment_dim, feat, bias=False)) if self.augment_dim > 0 else None
        )
        # One embedder each for 1 - 1/w, t_min and t_max (absent unless guidance_cond, so the default
        # network keeps its parameters, their order and the RNG draws of its initialisation).
        self.map_guidance = (nn.ModuleList(TimestepEmbedder(feat, model_channels) for _ in range(3))
                             if self.guidance_cond else None)
        self.map_layer0 = xavier(nn.Linear(feat, emb_channels))
        self.map_layer1 = xavier(nn.Linear(emb_channels, emb_channels))

    def _build_encoder(self, model_channels: int, channel_mult: Sequence[int], num_blocks: int,
                       attn_resolutions: Sequence[int], kw: dict) -> tuple[int, list[int]]:
        """``self.enc``: per level (resolution ``img_resolution / 2^level``) a 3x3 input conv (level 0)
        or a downsampling block, then `num_blocks` blocks (attention at `attn_resolutions`). Returns the
        output channels and the channels of every encoder output (the decoder's skips)."""
        self.enc = nn.ModuleDict()
        cout = self.in_channels
        for level, mult in enumerate(channel_mult):
            res = self.img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = xavier(nn.Conv2d(cout, model_channels, 3, padding=1))
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **kw)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **kw
                )
        return cout, [m.out_channels for m in self.enc.values()]

    def _build_decoder(self, cout: int, skips: list[int], model_channels: int, channel_mult: Sequence[int],
                       num_blocks: int, attn_resolutions: Sequence[int], kw: dict) -> int:
        """``self.dec``: from the lowest resolution up, two middle blocks (the first with attention) or
        an upsampling block, then `num_blocks + 1` blocks that each take one encoder skip (attention in
        the last one at `attn_resolutions`). Returns the output channels."""
        levels = len(channel_mult)
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = self.img_resolution >> level
            if level == levels - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **kw)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **kw)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **kw)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=idx == num_blocks and res in attn_resolutions,
                    takes_skip=True, **kw,
                )
        return cout

    def _embed(self, t, h, y, dt, dh, augment_labels, guidance) -> L.Pair:
        """``emb [B, E]`` and its tangent (None in plain mode) from ``t, h [B]``, ``y [B]`` or None,
        ``augment_labels [B, augment_dim]`` or None and ``guidance [B, 3]`` or None."""
        n = self.noise_channels
        et, det = self._time_features(t, dt, n)
        eh, deh = self._time_features(h, dh, n)
        e = torch.cat([et, eh], dim=1)
        de = None if det is None else torch.cat([det, deh], dim=1)
        if self.map_label is not None:
            e = e + self.map_label(y, t.shape[0], t.device)
        if self.map_augment is not None and augment_labels is not None:
            if augment_labels.shape != (t.shape[0], self.augment_dim):
                raise UserError(
                    f"augment_labels must have shape [B, {self.augment_dim}], "
                    f"got {tuple(augment_labels.shape)}"
                )
            e = e + self.map_augment(augment_labels.to(e.dtype))
        eg = self._guidance_embedding(guidance, t.shape[0], e)
        if eg is not None:
            e = e + eg  # no tangent: de unchanged
        e, de = L.silu(*L.linear(self.map_layer0, e, de))
        return L.silu(*L.linear(self.map_layer1, e, de))

    def _block_embeddings(self, t, h, y, dt, dh, augment_labels, guidance) -> list[L.Pair]:
        """``(emb, demb)`` of each residual block in execution order: one embedding of ``(t, h)``, or with
        ``decoupled_depth = k`` that of ``(t, 0)`` for the first ``k`` and of ``(t - h, 0)`` (tangent
        ``dt - dh``) for the rest."""
        n, k = self.num_blocks_total, self.decoupled_depth
        if not k:
            return [self._embed(t, h, y, dt, dh, augment_labels, guidance)] * n
        zero, dzero = torch.zeros_like(h), None if dh is None else torch.zeros_like(dh)
        enc = self._embed(t, zero, y, dt, dzero, augment_labels, guidance)
        dec = self._embed(t - h, zero, y, None if dt is None else dt - dh, dzero, augment_labels, guidance)
        return [enc] * k + [dec] * (n - k)

    def _time_features(self, t: Tensor, dt: Tensor | None, n: int) -> L.Pair:
        """``pos(t)`` ``[B, n]`` (EDM's endpoint frequencies) in the configured order, with tangent."""
        e, de = sinusoidal(t, dt, n, endpoint=True)
        if self.embedding_order == "sin-cos":  # halves swapped, as in the official MeanFlow U-Net
            e = torch.cat(e.chunk(2, dim=1)[::-1], dim=1)
            de = None if de is None else torch.cat(de.chunk(2, dim=1)[::-1], dim=1)
        return e, de

    def _guidance_embedding(self, guidance: Tensor | None, b: int, like: Tensor) -> Tensor | None:
        """``E_w(1 - 1/w) + E_a(t_min) + E_b(t_max)`` ``[B, 2 model_channels]`` from ``guidance =
        [w, t_min, t_max]`` ``[B, 3]`` (None without guidance_cond: the forward is the one of before)."""
        if not self.guidance_cond:
            if guidance is not None:
                raise UserError("unet got guidance inputs but was built without guidance_cond=True")
            return None
        if guidance is None:
            raise UserError("unet built with guidance_cond=True needs the keyword input guidance=[B, 3] "
                            "(omega, t_min, t_max)")
        if tuple(guidance.shape) != (b, 3):
            raise UserError(f"unet guidance must have shape ({b}, 3), got {tuple(guidance.shape)}")
        g = guidance.to(like.device, like.dtype)
        feats = (1 - 1 / g[:, 0], g[:, 1], g[:, 2])
        return sum(emb(f)[0] for emb, f in zip(self.map_guidance, feats))

    def pair_forward(self, z, t, h, y, dz, dt, dh, augment_labels: Tensor | None = None,
                     guidance: Tensor | None = None):
        if z.dim() != 4 or z.shape[1] != self.in_channels or z.shape[2] != self.img_resolution:
            raise UserError(
                f"unet built for inputs [B, {self.in_channels}, {self.img_resolution}, "
                f"{self.img_resolution}], got {tuple(z.shape)}"
            )
        embs = iter(self._block_embeddings(t, h, y, dt, dh, augment_labels, guidance))
        x, dx = z, dz
        skips = []
        for block in self.enc.values():
            if isinstance(block, UNetBlock):
                x, dx = block(x, dx, *next(embs))
            else:
                x, dx = L.conv2d(block, x, dx)
            skips.append((x, dx))
        for block in self.dec.values():
            if block.takes_skip:
                s, ds = skips.pop()
                x = torch.cat([x, s], dim=1)
                dx = None if dx is None else torch.cat([dx, ds], dim=1)
            x, dx = block(x, dx, *next(embs))
        x, dx = self.out_norm(x, dx)
        x, dx = L.silu(x, dx)
        return L.conv2d(self.out_conv, x, dx)


MEANFLOW_CIFAR10 = dict(model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16],
                       dropout=0.2, channel_mult_noise=2, embedding_order="sin-cos",
                       resample_filter=[1, 3, 3, 1])
"""SongUNet options of the official MeanFlow CIFAR-10 network (Gsunshine/py-meanflow's ``unet``
config; with ``augment_dim=6`` when trained with its augmentation, as released): 55,932,419 parameters
with augmentation labels, 55,929,347 without."""


def unet_ddpmpp(img_resolution: int = 32, in_channels: int = 3, dropout: float = 0.2,
                num_classes: int = 0, augment_dim: int = 0, guidance_cond: bool = False,
                log_variance: bool = False) -> SongUNet:
    """EDM's DDPM++ sizes: 128 channels, ``[2, 2, 2]``, 4 blocks, attention at 16x16, dropout 0.2,
    128 time features each for ``t`` and ``h``, ``[1, 1]`` resampling (55,798,275 parameters).
    Kept as it was so that runs saved with it still load; the official MeanFlow network, which
    differs in its time features and resampling filter, is :func:`unet_meanflow`."""
    return SongUNet(img_resolution=img_resolution, in_channels=in_channels, model_channels=128,
                    channel_mult=(2, 2, 2), num_blocks=4, attn_resolutions=(16,), dropout=dropout,
                    num_classes=num_classes, augment_dim=augment_dim, guidance_cond=guidance_cond,
                    log_variance=log_variance)


def unet_meanflow(img_resolution: int = 32, in_channels: int = 3, dropout: float = 0.2,
                  num_classes: int = 0, augment_dim: int = 0, guidance_cond: bool = False,
                  log_variance: bool = False) -> SongUNet:
    """The official MeanFlow CIFAR-10 U-Net (:data:`MEANFLOW_CIFAR10`): DDPM++ sizes with 256
    ``[sin, cos]`` time features each for ``t`` and ``h`` and the ``[1, 3, 3, 1]`` resampling filter;
    the released checkpoint has ``augment_dim=6``. ``guidance_cond`` as in :class:`SongUNet`."""
    kw = {**MEANFLOW_CIFAR10, "dropout": dropout}
    return SongUNet(img_resolution=img_resolution, in_channels=in_channels, num_classes=num_classes,
                    augment_dim=augment_dim, guidance_cond=guidance_cond, log_variance=log_variance, **kw)
