"""The improved-MeanFlow DiT (iMF; Geng, Lu et al., arXiv 2512.02012) with tangent mode.

Architecture facts from the official code (``github.com/Lyy-iiis/imeanflow``, ``models/imfDiT.py``,
``models/torch_models.py``, ``models/embedder.py``):

* **in-context conditioning**, no adaLN: each condition is embedded (sinusoidal features + 2-layer MLP
  for scalars, a table for the class) and *added to its own learned tokens*, which are prepended to the
  patch tokens: 8 class tokens, 4 guidance-scale tokens (fed ``1 - 1/w``), 2 + 2 interval tokens
  (``t_min``, ``t_max``) and 4 time tokens; sequence order ``[class, w, t_min, t_max, time, patches]``.
  The official network is conditioned on ``h = t - r`` only, not on ``t`` (it cites arXiv 2502.13129:
  the noisy input reveals the noise level); ``t_tokens > 0`` adds tokens for ``t`` (not official);
* **RoPE** on ``q, k`` after **QK RMS-norm** (per head); the official code rotates consecutive channel
  pairs by 1-D positions ``0..L-1`` over the *whole* sequence, conditioning tokens included
  (``rope="1d"``, the default). ``rope="2d"`` is an alternative (not official): half of the pairs
  rotate by the patch row, half by the column, and the conditioning tokens are not rotated
  (angle 0, i.e. they carry no position). There is no absolute position embedding;
* pre-norm blocks with RMSNorm, **SwiGLU** MLP (ratio 8/3) and zero-initialised per-channel residual
  gates; no biases inside the blocks;
* the output layer (RMSNorm + linear) reads the patch tokens only and starts at zero, so the network
  outputs exactly zero at initialisation.

One difference (see :mod:`meanflow.methods.improved_meanflow`): the official model duplicates its last
8 blocks as an auxiliary v-head used only in training; here the network has a single output and
``depth`` counts the blocks of the u path (shared + u-head), i.e. the network kept at inference.

Guidance (``guidance_cond=True``) is the keyword input ``guidance = [w, t_min, t_max]`` ``[B, 3]``, as for
:class:`meanflow.networks.MLP`. Class and guidance tokens have zero tangent; the time tokens carry the
tangents of ``t`` and ``h``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.networks import layers as L
from meanflow.networks.base import TangentNet
from meanflow.networks.embeddings import LabelEmbedder, TimestepEmbedder
from meanflow.networks.imf_layers import IMFBlock, RMSNorm


def rope_angles(head_dim: int, prefix: int, grid: int, mode: str, theta: float = 10000.0) -> Tensor:
    """Rotation angles ``[prefix + grid^2, head_dim / 2]`` (float64) for the channel pairs of a head.

    ``"1d"``: token ``i`` (conditioning tokens first) gets ``i * theta^(-2j / head_dim)`` for pair ``j``.
    ``"2d"``: conditioning tokens get 0; patch ``(row, col)`` (row-major) gets ``row * f_j`` on the
    first half of the pairs and ``col * f_j`` on the second, ``f_j = theta^(-4j / head_dim)``.
    """
    if mode == "1d":
        freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        return torch.outer(torch.arange(prefix + grid * grid, dtype=torch.float64), freqs)
    freqs = theta ** (-torch.arange(0, head_dim // 2, 2, dtype=torch.float64) / (head_dim // 2))
    pos = torch.arange(grid * grid, dtype=torch.float64)
    patches = torch.cat([torch.outer(pos.div(grid, rounding_mode="floor"), freqs),
                         torch.outer(pos.remainder(grid), freqs)], dim=1)
    return torch.cat([patches.new_zeros(prefix, head_dim // 2), patches])


class IMFDiT(TangentNet):
    """iMF DiT ``net(z, t, h, y, guidance=None)`` (see the module docstring).

    Args:
        input_size: spatial size ``H = W`` of the input.
        in_channels: channels ``C`` of the input and the output.
        patch_size: ``p``; must divide ``input_size``.
        hidden_size: token width ``D``.
        depth: number of blocks.
        num_heads: attention heads (``D / num_heads`` even; divisible by 4 for ``rope="2d"``).
        mlp_ratio: SwiGLU hidden width / ``D`` (hidden width ``int(D * mlp_ratio)``).
        num_classes: 0 = unconditional (no class tokens); else ids ``[0, num_classes]``, last = null.
        frequency_dim: sinusoidal features per scalar condition.
        guidance_cond: also condition on ``guidance = [w, t_min, t_max]`` ``[B, 3]`` (required input then).
        class_tokens, time_tokens, guidance_tokens, interval_tokens: in-context token counts (8, 4, 4, 2).
        t_tokens: tokens for ``t`` (0 = official: conditioned on ``h`` only).
        rope: ``"1d"`` (official) or ``"2d"``.
    """

    def __init__(self, input_size: int = 32, in_channels: int = 4, patch_size: int = 2,
                 hidden_size: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 8 / 3,
                 num_classes: int = 0, frequency_dim: int = 256, guidance_cond: bool = False,
                 class_tokens: int = 8, time_tokens: int = 4, guidance_tokens: int = 4,
                 interval_tokens: int = 2, t_tokens: int = 0, rope: str = "1d"):
        super().__init__()
        if patch_size < 1 or input_size % patch_size:
            raise UserError(f"imf-dit input_size {input_size} is not divisible by patch_size {patch_size}")
        pair = 4 if rope == "2d" else 2
        if num_heads < 1 or hidden_size % num_heads or (hidden_size // num_heads) % pair:
            raise UserError(f"imf-dit hidden_size {hidden_size} / num_heads {num_heads} must be an integer "
                            f"divisible by {pair} (rope={rope!r})")
        if rope not in ("1d", "2d"):
            raise UserError(f"imf-dit rope must be '1d' or '2d', got {rope!r}")
        if depth < 1 or in_channels < 1 or num_classes < 0:
            raise UserError("imf-dit needs depth >= 1, in_channels >= 1 and num_classes >= 0")
        if not isinstance(guidance_cond, bool):
            raise UserError(f"imf-dit guidance_cond must be true or false, got {guidance_cond!r}")
        if min(class_tokens, time_tokens, guidance_tokens, interval_tokens) < 1 or t_tokens < 0:
            raise UserError("imf-dit needs >= 1 class/time/guidance/interval tokens and t_tokens >= 0")
        self.input_size, self.in_channels, self.patch_size = input_size, in_channels, patch_size
        self.num_classes, self.guidance_cond = num_classes, guidance_cond
        self.grid = input_size // patch_size
        d = hidden_size

        def tokens(n: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(n, d) / math.sqrt(d))

        self.x_embedder = nn.Conv2d(in_channels, d, patch_size, stride=patch_size)
        self.y_embedder = LabelEmbedder(num_classes, d) if num_classes > 0 else None
        self.class_tokens = tokens(class_tokens) if num_classes > 0 else None
        # Guidance: embedders and tokens for 1 - 1/w, t_min, t_max (absent unless guidance_cond).
        self.g_embedders = (nn.ModuleList(TimestepEmbedder(d, frequency_dim) for _ in range(3))
                            if guidance_cond else None)
        self.g_tokens = (nn.ParameterList([tokens(guidance_tokens), tokens(interval_tokens),
                                           tokens(interval_tokens)]) if guidance_cond else None)
        self.t_embedder = TimestepEmbedder(d, frequency_dim) if t_tokens else None
        self.t_tokens = tokens(t_tokens) if t_tokens else None
        self.h_embedder = TimestepEmbedder(d, frequency_dim)
        self.h_tokens = tokens(time_tokens)
        self.prefix = ((class_tokens if num_classes > 0 else 0) + t_tokens + time_tokens
                       + (guidance_tokens + 2 * interval_tokens if guidance_cond else 0))

        angles = rope_angles(d // num_heads, self.prefix, self.grid, rope).float()
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.blocks = nn.ModuleList(IMFBlock(d, num_heads, mlp_ratio) for _ in range(depth))
        self.final_norm = RMSNorm(d)
        self.final_linear = nn.Linear(d, patch_size * patch_size * in_channels)
        self.initialize_weights()

    def initialize_weights(self, block_init: float = 0.32) -> None:
        """The official init: ``N(0, c^2 / fan_in)`` linears (``c = 0.32`` in the blocks, 1 in the
        embedders), ``N(0, 1/D)`` class table, Xavier patch embedding, zero gates and zero output layer."""
        for blk in self.blocks:
            for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.w13, blk.mlp.w2):
                nn.init.normal_(lin.weight, std=block_init / math.sqrt(lin.in_features))
        embedders = [e for e in (self.t_embedder, self.h_embedder) if e is not None]
        embedders += list(self.g_embedders or ())
        for emb in embedders:
            for lin in (emb.fc1, emb.fc2):
                nn.init.normal_(lin.weight, std=1 / math.sqrt(lin.in_features))
        if self.y_embedder is not None:
            table = self.y_embedder.table
            nn.init.normal_(table.weight, std=1 / math.sqrt(table.embedding_dim))
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.zeros_(self.final_linear.weight)
        nn.init.zeros_(self.final_linear.bias)

    def _condition_tokens(self, t, h, y, dt, dh, guidance, b, like) -> L.Pair:
        """Prefix tokens ``[B, prefix, D]`` and their tangent (zero except the time tokens)."""
        toks: list[Tensor] = []
        dtoks: list[Tensor] = []

        def add(base: Tensor, e: Tensor, de: Tensor | None) -> None:
            toks.append(base + e[:, None])
            if dt is not None:  # the tangent covers the leading dt.shape[0] rows
                shape = (dt.shape[0], *toks[-1].shape[1:])
                dtoks.append(toks[-1].new_zeros(shape) if de is None else de[:, None].expand(shape))

        if self.y_embedder is not None:
            add(self.class_tokens, self.y_embedder(y, b, like.device), None)
        if self.guidance_cond:
            g = self._guidance(guidance, b, like)
            for emb, base, f in zip(self.g_embedders, self.g_tokens, (1 - 1 / g[:, 0], g[:, 1], g[:, 2])):
                add(base, emb(f)[0], None)
        elif guidance is not None:
            raise UserError("imf-dit got guidance inputs but was built without guidance_cond=True")
        if self.t_embedder is not None:
            add(self.t_tokens, *self.t_embedder(t, dt))
        add(self.h_tokens, *self.h_embedder(h, dh))
        seq = torch.cat(toks, dim=1)
        if dt is None:
            return seq, None
        with torch.no_grad():
            return seq, torch.cat(dtoks, dim=1)

    def _guidance(self, guidance: Tensor | None, b: int, like: Tensor) -> Tensor:
        if guidance is None:
            raise UserError("imf-dit built with guidance_cond=True needs the keyword input guidance=[B, 3] "
                            "(omega, t_min, t_max)")
        if tuple(guidance.shape) != (b, 3):
            raise UserError(f"imf-dit guidance must have shape ({b}, 3), got {tuple(guidance.shape)}")
        return guidance.to(like.device, like.dtype)

    def _unpatchify(self, x: Tensor) -> Tensor:
        # [B, N, p*p*C] -> [B, C, H, W]
        b, p, g, c = x.shape[0], self.patch_size, self.grid, self.in_channels
        return x.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)

    def pair_forward(self, z, t, h, y, dz, dt, dh, guidance: Tensor | None = None):
        b = z.shape[0]
        if z.dim() != 4 or z.shape[1:] != (self.in_channels, self.input_size, self.input_size):
            raise UserError(f"imf-dit built for inputs [B, {self.in_channels}, {self.input_size}, "
                            f"{self.input_size}], got {tuple(z.shape)}")
        c, dc = self._condition_tokens(t, h, y, dt, dh, guidance, b, z)
        x, dx = L.conv2d(self.x_embedder, z, dz)
        x = torch.cat([c, x.flatten(2).transpose(1, 2)], dim=1)
        if dx is not None:
            with torch.no_grad():
                dx = torch.cat([dc, dx.flatten(2).transpose(1, 2)], dim=1)
        cos, sin = self.rope_cos.to(x.dtype), self.rope_sin.to(x.dtype)
        for blk in self.blocks:
            x, dx = blk(x, dx, cos, sin)
        x = x[:, self.prefix:]
        dx = None if dx is None else dx[:, self.prefix:]
        x, dx = self.final_norm(x, dx)
        x, dx = L.linear(self.final_linear, x, dx)
        return self._unpatchify(x), None if dx is None else self._unpatchify(dx)


IMF_DIT_SIZES: dict[str, tuple[int, int, int]] = {
    # name: (depth, hidden_size, num_heads) of imfDiT_{B,M,L,XL}_2 in the official models/imfDiT.py
    "b": (12, 768, 12),
    "m": (24, 768, 12),
    "l": (32, 1024, 16),
    "xl": (48, 1024, 16),
}


def imf_dit_factory(size: str, patch_size: int = 2):
    """Return a factory ``(input_size=32, in_channels=4, num_classes=1000, ...) -> IMFDiT`` of one size."""
    depth, hidden, heads = IMF_DIT_SIZES[size]

    def build(input_size: int = 32, in_channels: int = 4, num_classes: int = 1000,
              frequency_dim: int = 256, guidance_cond: bool = False) -> IMFDiT:
        return IMFDiT(input_size=input_size, in_channels=in_channels, patch_size=patch_size,
                      hidden_size=hidden, depth=depth, num_heads=heads, num_classes=num_classes,
                      frequency_dim=frequency_dim, guidance_cond=guidance_cond)

    build.__doc__ = f"iMF-DiT-{size.upper()}/{patch_size}: depth {depth}, width {hidden}, {heads} heads."
    return build
