"""The pixel-MeanFlow DiT (pMF; arXiv 2601.22158): a JiT-style pixel transformer with tangent mode.

It outputs an *image* ``x_hat`` (x-prediction); :mod:`meanflow.methods.pmf` turns it into the average
velocity ``u = (z - x_hat) / clip(t, 0.05, 1)``. Architecture facts, confirmed in the official code
``github.com/Lyy-iiis/pMF`` at commit ``75f6073`` (``models/pmfDiT.py``, ``models/embedder.py``,
``models/torch_models.py``; read for facts only):

* **bottleneck patch embedding** (``embedder.py:74-120``): a ``p x p`` stride-``p`` convolution to
  128 channels (256 when the width is above 1024, ``pmfDiT.py:177``), then a ``1 x 1`` convolution to
  the width ``D``, both with biases, Xavier-uniform over ``(p, p, C_in) -> C_out`` and zero biases;
* **in-context tokens** (``pmfDiT.py:151-154, 289-334``), as in the iMF DiT: 8 class, 4 guidance-scale
  (fed ``1 - 1/w``), 2 + 2 interval (``t_min``, ``t_max``) and 4 ``h`` tokens, each a learned token
  plus the embedding of its condition, order ``[class, w, t_min, t_max, h, patches]``; the network is
  conditioned on ``h = t - r`` only, never on ``t`` (``pmfDiT.py:353-355``);
* a learned **absolute position embedding** over the whole sequence, ``N(0, 0.02^2)``
  (``pmfDiT.py:243-247, 332``), plus **2-D RoPE** on the patch tokens only (``pmfDiT.py:240-242,
  386-406``): consecutive channel pairs of a head, half rotated by the patch row and half by the
  column, ``f_j = 10000^(-4 j / head_dim)``; the conditioning tokens are not rotated;
* pre-norm blocks with RMSNorm, **QK RMS-norm** per head, **SwiGLU** (ratio 8/3, no biases) and
  **zero-initialised** per-channel residual gates (``pmfDiT.py:22-105``, ``torch_models.py:71-110``);
  linears ``N(0, 0.32^2 / fan_in)`` in the blocks, ``N(0, 1 / fan_in)`` in the embedders;
* **u- and v-heads** (``pmfDiT.py:134-138, 249-276, 357-371``): the first ``depth - aux_head_depth``
  blocks are shared; the last ``aux_head_depth`` (8) are duplicated, each copy with its own output
  layer (RMSNorm + zero-initialised linear on the patch tokens). The v-head serves training only.
* sizes (``pmfDiT.py:413-472``): B 16 x 768 (12 heads), L 32 x 1024 (16), H 48 x 1280 (16), patch 16
  at 256 px and 32 at 512 px.

Here ``depth`` counts the blocks of the u path (shared + u-head, the network kept for sampling), as
the official ``depth``; the v-head adds ``aux_head_depth`` blocks. The official network converts both
heads to velocities itself (``pmfDiT.py:373-376``); here that conversion is the method's.

Heads (keyword ``head``): ``"u"`` (default) returns the u-head's ``x_hat [B, C, H, W]``; ``"v"`` the
v-head's; ``"uv"`` both in one pass, concatenated along channels ``[B, 2C, H, W]`` (u first). In
tangent mode ``"u"`` and ``"v"`` return the exact tangent of their output; ``"uv"`` returns the tangent
of the u half only, ``[n, C, H, W]`` (the v-head is an auxiliary output the method never
differentiates, so its tangent is not computed). Guidance (``guidance_cond=True``) is the keyword
input ``guidance = [w, t_min, t_max]`` ``[B, 3]``; class and guidance tokens have zero tangent.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.networks import layers as L
from meanflow.networks.imf_dit import IMFDiT
from meanflow.networks.imf_layers import IMFBlock, RMSNorm

HEADS = ("u", "v", "uv")


class PMFDiT(IMFDiT):
    """pMF DiT ``net(z, t, h, y, guidance=None, head="u") -> x_hat`` (see the module docstring).

    Args:
        input_size: spatial size ``H = W`` of the input.
        in_channels: channels ``C`` of the input and the output.
        patch_size: ``p``; must divide ``input_size``.
        hidden_size: token width ``D``.
        depth: blocks of the u path (shared + u-head).
        num_heads: attention heads (``D / num_heads`` divisible by 4: 2-D RoPE).
        mlp_ratio: SwiGLU hidden width / ``D``.
        num_classes: 0 = unconditional (no class tokens); else ids ``[0, num_classes]``, last = null.
        bottleneck: channels of the patch-embedding bottleneck (None: 128, or 256 when ``D > 1024``).
        aux_head_depth: blocks of each head (0: no v-head, e.g. for sampling only).
        frequency_dim: sinusoidal features per scalar condition.
        guidance_cond: condition on ``guidance = [w, t_min, t_max]`` ``[B, 3]`` (required input then).
        class_tokens, time_tokens, guidance_tokens, interval_tokens: token counts (8, 4, 4, 2).
    """

    def __init__(self, input_size: int = 32, in_channels: int = 3, patch_size: int = 4,
                 hidden_size: int = 768, depth: int = 16, num_heads: int = 12, mlp_ratio: float = 8 / 3,
                 num_classes: int = 0, bottleneck: int | None = None, aux_head_depth: int = 8,
                 frequency_dim: int = 256, guidance_cond: bool = False, class_tokens: int = 8,
                 time_tokens: int = 4, guidance_tokens: int = 4, interval_tokens: int = 2):
        if patch_size < 1 or input_size % patch_size:
            raise UserError(f"pmf-dit input_size {input_size} is not divisible by patch_size {patch_size}")
        if num_heads < 1 or hidden_size % num_heads or (hidden_size // num_heads) % 4:
            raise UserError(f"pmf-dit hidden_size {hidden_size} / num_heads {num_heads} must be an integer "
                            "divisible by 4 (2-D RoPE)")
        if depth < 1 or in_channels < 1 or num_classes < 0:
            raise UserError("pmf-dit needs depth >= 1, in_channels >= 1 and num_classes >= 0")
        if not 0 <= aux_head_depth <= depth:
            raise UserError(f"pmf-dit aux_head_depth must be in [0, depth={depth}], got {aux_head_depth}")
        if not isinstance(guidance_cond, bool):
            raise UserError(f"pmf-dit guidance_cond must be true or false, got {guidance_cond!r}")
        if min(class_tokens, time_tokens, guidance_tokens, interval_tokens) < 1:
            raise UserError("pmf-dit needs >= 1 class/time/guidance/interval tokens")
        bottleneck = (128 if hidden_size <= 1024 else 256) if bottleneck is None else bottleneck
        if bottleneck < 1:
            raise UserError(f"pmf-dit bottleneck must be >= 1, got {bottleneck}")
        super().__init__(input_size=input_size, in_channels=in_channels, patch_size=patch_size,
                         hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         num_classes=num_classes, frequency_dim=frequency_dim, guidance_cond=guidance_cond,
                         class_tokens=class_tokens, time_tokens=time_tokens,
                         guidance_tokens=guidance_tokens, interval_tokens=interval_tokens, rope="2d")
        d = hidden_size
        self.aux_head_depth = aux_head_depth
        # Bottleneck patch embedding: x_embedder (p x p, C -> bottleneck), then x_proj (1 x 1, -> D).
        self.x_embedder = nn.Conv2d(in_channels, bottleneck, patch_size, stride=patch_size)
        self.x_proj = nn.Conv2d(bottleneck, d, 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.prefix + self.grid ** 2, d))
        self.v_blocks = nn.ModuleList(IMFBlock(d, num_heads, mlp_ratio) for _ in range(aux_head_depth))
        self.v_final_norm = RMSNorm(d) if aux_head_depth else None
        self.v_final_linear = nn.Linear(d, patch_size * patch_size * in_channels) if aux_head_depth else None
        self.initialize_weights()

    @property
    def heads(self) -> tuple[str, ...]:
        """The values the ``head`` keyword takes (``("u",)`` without a v-head)."""
        return HEADS if self.aux_head_depth else ("u",)

    @property
    def shared_depth(self) -> int:
        """Blocks shared by both heads (``depth - aux_head_depth``)."""
        return len(self.blocks) - self.aux_head_depth

    def initialize_weights(self, block_init: float = 0.32) -> None:
        """The official init (module docstring): the iMF DiT's, plus Xavier-uniform bottleneck convs with
        zero biases, ``N(0, 0.02^2)`` position embedding, and the v-head like the u-head."""
        super().initialize_weights(block_init)
        if not hasattr(self, "v_blocks"):  # called from IMFDiT.__init__, before the pMF parts exist
            return
        nn.init.xavier_uniform_(self.x_proj.weight.view(self.x_proj.weight.shape[0], -1))
        nn.init.zeros_(self.x_proj.bias)
        nn.init.normal_(self.pos_embed, std=0.02)
        for blk in self.v_blocks:
            for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.w13, blk.mlp.w2):
                nn.init.normal_(lin.weight, std=block_init / math.sqrt(lin.in_features))
        if self.v_final_linear is not None:
            nn.init.zeros_(self.v_final_linear.weight)
            nn.init.zeros_(self.v_final_linear.bias)

    def _guidance(self, guidance: Tensor | None, b: int, like: Tensor) -> Tensor:
        if guidance is None:
            raise UserError("pmf-dit built with guidance_cond=True needs the keyword input guidance=[B, 3] "
                            "(omega, t_min, t_max)")
        if tuple(guidance.shape) != (b, 3):
            raise UserError(f"pmf-dit guidance must have shape ({b}, 3), got {tuple(guidance.shape)}")
        return guidance.to(like.device, like.dtype)

    def embed(self, z: Tensor, dz: Tensor | None) -> L.Pair:
        """Bottleneck patch embedding: ``[B, C, H, W] -> [B, N, D]`` tokens (row-major patches)."""
        x, dx = L.conv2d(self.x_embedder, z, dz)
        x, dx = L.conv2d(self.x_proj, x, dx)
        return x.flatten(2).transpose(1, 2), None if dx is None else dx.flatten(2).transpose(1, 2)

    def _head(self, blocks, norm, linear, x: Tensor, dx: Tensor | None, cos, sin) -> L.Pair:
        """Blocks, then the output layer on the patch tokens -> images ``[B, C, H, W]`` and tangent."""
        for blk in blocks:
            x, dx = blk(x, dx, cos, sin)
        x, dx = norm(x[:, self.prefix:], None if dx is None else dx[:, self.prefix:])
        x, dx = L.linear(linear, x, dx)
        return self._unpatchify(x), None if dx is None else self._unpatchify(dx)

    def pair_forward(self, z, t, h, y, dz, dt, dh, guidance: Tensor | None = None, head: str = "u"):
        if head not in HEADS:
            raise UserError(f"pmf-dit head must be one of {', '.join(HEADS)}, got {head!r}")
        if head != "u" and not self.aux_head_depth:
            raise UserError(f"pmf-dit head={head!r} needs the v-head, but aux_head_depth is 0")
        if z.dim() != 4 or z.shape[1:] != (self.in_channels, self.input_size, self.input_size):
            raise UserError(f"pmf-dit built for inputs [B, {self.in_channels}, {self.input_size}, "
                            f"{self.input_size}], got {tuple(z.shape)}")
        if guidance is not None and not self.guidance_cond:
            raise UserError("pmf-dit got guidance inputs but was built without guidance_cond=True")
        c, dc = self._condition_tokens(t, h, y, dt, dh, guidance, z.shape[0], z)
        x, dx = self.embed(z, dz)
        x = torch.cat([c, x], dim=1) + self.pos_embed
        if dx is not None:
            with torch.no_grad():
                dx = torch.cat([dc, dx], dim=1)
        cos, sin = self.rope_cos.to(x.dtype), self.rope_sin.to(x.dtype)
        k = self.shared_depth
        for blk in self.blocks[:k]:
            x, dx = blk(x, dx, cos, sin)
        u = du = v = dv = None
        if head in ("u", "uv"):
            u, du = self._head(self.blocks[k:], self.final_norm, self.final_linear, x, dx, cos, sin)
        if head in ("v", "uv"):
            v, dv = self._head(self.v_blocks, self.v_final_norm, self.v_final_linear, x,
                               dx if head == "v" else None, cos, sin)
        if head == "u":
            return u, du
        if head == "v":
            return v, dv
        return torch.cat([u, v], dim=1), du


PMF_DIT_SIZES: dict[str, tuple[int, int, int]] = {
    # name: (depth, hidden_size, num_heads) of pmfDiT_{B,L,H}_{16,32} in models/pmfDiT.py:413-472
    "b": (16, 768, 12),
    "l": (32, 1024, 16),
    "h": (48, 1280, 16),
}


def pmf_dit_factory(size: str, patch_size: int):
    """A factory ``(input_size, in_channels=3, num_classes=1000, ...) -> PMFDiT`` of one official size
    (input 256 for patch 16, 512 for patch 32, as the official configurations)."""
    depth, hidden, heads = PMF_DIT_SIZES[size]
    default_size = 16 * patch_size

    def build(input_size: int = default_size, in_channels: int = 3, num_classes: int = 1000,
              frequency_dim: int = 256, guidance_cond: bool = False, aux_head_depth: int = 8) -> PMFDiT:
        return PMFDiT(input_size=input_size, in_channels=in_channels, patch_size=patch_size,
                      hidden_size=hidden, depth=depth, num_heads=heads, num_classes=num_classes,
                      frequency_dim=frequency_dim, guidance_cond=guidance_cond, aux_head_depth=aux_head_depth)

    build.__doc__ = (f"pMF-DiT-{size.upper()}/{patch_size}: depth {depth} (+ aux_head_depth v-head blocks), "
                     f"width {hidden}, {heads} heads, input {default_size}.")
    return build
