"""Diffusion Transformer (Peebles & Xie 2023) as used by MeanFlow, with tangent mode.

Input ``z [B, C, H, W]`` is cut into ``p x p`` patches, linearly embedded and given a fixed 2-D
sin-cos position embedding. The conditioning vector ``c = E_t(t) + E_h(h) + E_y(y)`` drives
adaLN-zero blocks::

    shift1, scale1, gate1, shift2, scale2, gate2 = W_mod silu(c)
    x = x + gate1 * Attn(LN(x) (1 + scale1) + shift1)
    x = x + gate2 * MLP(LN(x) (1 + scale2) + shift2)

The modulation layers and the final projection start at zero, so the network outputs exactly
zero at initialisation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.networks import layers as L
from meanflow.networks.base import TangentNet
from meanflow.networks.embeddings import LabelEmbedder, LogVarianceHead, TimestepEmbedder, block_conditions


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding (MAE/DiT layout).

    Half of the channels encode the row, half the column, each as ``[sin(w p), cos(w p)]`` with
    ``w_i = 10000^(-i / (dim/4))``.

    Returns:
        ``[grid * grid, dim]`` float32, row-major over the patch grid.
    """
    if dim % 4:
        raise UserError(f"DiT hidden_size must be divisible by 4, got {dim}")
    w = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    pos = torch.arange(grid, dtype=torch.float64)
    gy, gx = torch.meshgrid(pos, pos, indexing="ij")

    def one_axis(p: Tensor) -> Tensor:
        a = p.reshape(-1, 1) * w
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    # DiT's grid puts the x (column) coordinate first.
    return torch.cat([one_axis(gx), one_axis(gy)], dim=1).float()


class Attention(nn.Module):
    """Multi-head self-attention on tokens ``[B, N, D]`` with fused SDPA in the primal."""

    muon_row_blocks = {"qkv.weight": 3}
    """``qkv.weight`` stacks the q, k and v matrices (rows): three matrices for Muon
    (:mod:`meanflow.training.muon`)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, d = x.shape
        return x.reshape(b, n, 3, self.num_heads, d // (3 * self.num_heads)).permute(2, 0, 3, 1, 4)

    def forward(self, x: Tensor, dx: Tensor | None) -> L.Pair:
        """``(x, dx) -> (y, dy)``, shapes ``[B, N, D]``."""
        qkv, dqkv = L.linear(self.qkv, x, dx)
        q, k, v = self._heads(qkv)
        dq = dk = dv = None
        if dqkv is not None:
            dq, dk, dv = self._heads(dqkv)
        return L.linear(self.proj, *L.merge_heads(*L.attention(q, k, v, dq, dk, dv)))


class DiTBlock(nn.Module):
    """One adaLN-zero transformer block (attention + GELU MLP with ratio ``mlp_ratio``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = Attention(dim, num_heads)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.adaLN_modulation = nn.Linear(dim, 6 * dim)

    def forward(self, x: Tensor, dx: Tensor | None, c: Tensor, dc: Tensor | None) -> L.Pair:
        """Tokens ``x [B, N, D]`` and conditioning ``c [B, D]`` with tangents -> ``(x, dx)``."""
        m, dm = L.linear(self.adaLN_modulation, *L.silu(c, dc))
        mods = m[:, None].chunk(6, dim=-1)
        dmods = dm[:, None].chunk(6, dim=-1) if dm is not None else (None,) * 6
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        dshift1, dscale1, dgate1, dshift2, dscale2, dgate2 = dmods

        a, da = L.layer_norm(x, dx)
        a, da = L.modulate(a, da, shift1, dshift1, scale1, dscale1)
        a, da = self.attn(a, da)
        a, da = L.mul(gate1, dgate1, a, da)
        x = x + a
        dx = None if dx is None else dx + da

        a, da = L.layer_norm(x, dx)
        a, da = L.modulate(a, da, shift2, dshift2, scale2, dscale2)
        a, da = L.linear(self.fc1, a, da)
        a, da = L.gelu_tanh(a, da)
        a, da = L.linear(self.fc2, a, da)
        a, da = L.mul(gate2, dgate2, a, da)
        return x + a, None if dx is None else dx + da


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map from tokens to patches ``[B, N, p*p*C]``."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Linear(dim, 2 * dim)

    def forward(self, x: Tensor, dx: Tensor | None, c: Tensor, dc: Tensor | None) -> L.Pair:
        m, dm = L.linear(self.adaLN_modulation, *L.silu(c, dc))
        shift, scale = m[:, None].chunk(2, dim=-1)
        dshift, dscale = dm[:, None].chunk(2, dim=-1) if dm is not None else (None, None)
        x, dx = L.layer_norm(x, dx)
        x, dx = L.modulate(x, dx, shift, dshift, scale, dscale)
        return L.linear(self.linear, x, dx)


class DiT(TangentNet):
    """DiT backbone with the MeanFlow signature ``net(z, t, h, y)``.

    Args:
        input_size: spatial size ``H = W`` of the input.
        in_channels: channels ``C`` of the input (and the output).
        patch_size: ``p``; must divide ``input_size``.
        hidden_size: token width ``D`` (divisible by ``num_heads`` and by 4).
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``D``.
        num_classes: 0 = unconditional; else ids ``[0, num_classes]`` with ``num_classes`` = null.
        frequency_dim: sinusoidal features per time input.
        decoupled_depth: 0 (the MeanFlow DiT: every block gets ``E_t(t) + E_h(h) + E_y(y)``) or ``D``,
            Decoupled MeanFlow's split (arXiv 2510.24474): the first ``D`` blocks get
            ``E_t(t) + E_h(0) + E_y(y)``, the later blocks and the final layer ``E_t(r) + E_h(0) + E_y(y)``
            with ``r = t - h``, through the *same* ``E_t``; a flow-matching DiT (trained at h = 0) is
            thus exactly ``u(z, t, t)`` of this one, and its weights load unchanged.
        log_variance: add the zero-initialised head ``logvar(t, h) -> [B]``
            (``embeddings.LogVarianceHead``; DMF's adaptive loss weight; not part of ``forward``).
    """

    def __init__(
        self,
        input_size: int = 32,
        in_channels: int = 4,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        frequency_dim: int = 256,
        decoupled_depth: int = 0,
        log_variance: bool = False,
    ):
        super().__init__()
        if patch_size < 1 or input_size % patch_size:
            raise UserError(
                f"DiT input_size {input_size} is not divisible by patch_size {patch_size}"
            )
        if num_heads < 1 or hidden_size % num_heads:
            raise UserError(f"DiT hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if depth < 1 or in_channels < 1 or num_classes < 0:
            raise UserError("DiT needs depth >= 1, in_channels >= 1 and num_classes >= 0")
        if not 0 <= decoupled_depth < depth:
            raise UserError(f"DiT decoupled_depth must be in [0, depth = {depth}), got {decoupled_depth}")
        self.decoupled_depth = decoupled_depth
        self.input_size = input_size
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.grid = input_size // patch_size

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size, frequency_dim)
        self.h_embedder = TimestepEmbedder(hidden_size, frequency_dim)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size) if num_classes > 0 else None
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(hidden_size, self.grid)[None], persistent=False
        )
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels)
        self.initialize_weights()
        self.logvar = LogVarianceHead() if log_variance else None

    fresh_parameters = ("logvar.",)
    """Parameters that start from their initialisation when ``--init-from`` loads another run."""

    def initialize_weights(self) -> None:
        """DiT's init: Xavier linears, zero adaLN modulation and zero output layer."""
        for blk in self.blocks:
            for lin in (blk.attn.qkv, blk.attn.proj, blk.fc1, blk.fc2):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
            nn.init.zeros_(blk.adaLN_modulation.weight)
            nn.init.zeros_(blk.adaLN_modulation.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for lin in (self.final_layer.adaLN_modulation, self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _unpatchify(self, x: Tensor) -> Tensor:
        # [B, N, p*p*C] -> [B, C, H, W]
        b, p, g, c = x.shape[0], self.patch_size, self.grid, self.in_channels
        x = x.reshape(b, g, g, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)

    def pair_forward(self, z, t, h, y, dz, dt, dh):
        b = z.shape[0]
        if z.dim() != 4 or z.shape[1:] != (self.in_channels, self.input_size, self.input_size):
            raise UserError(
                f"DiT built for inputs [B, {self.in_channels}, {self.input_size}, "
                f"{self.input_size}], got {tuple(z.shape)}"
            )
        c, dc = block_conditions(self.t_embedder, self.h_embedder, self.y_embedder, t, h, y, dt, dh, b,
                                 z.device, len(self.blocks) + 1, self.decoupled_depth)
        x, dx = L.conv2d(self.x_embedder, z, dz)
        x = x.flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        if dx is not None:
            dx = dx.flatten(2).transpose(1, 2)
        for i, blk in enumerate(self.blocks):
            x, dx = blk(x, dx, c[i], dc[i])
        x, dx = self.final_layer(x, dx, c[-1], dc[-1])
        return self._unpatchify(x), None if dx is None else self._unpatchify(dx)


DIT_SIZES: dict[str, tuple[int, int, int]] = {
    # name: (depth, hidden_size, num_heads)
    "s": (12, 384, 6),
    "b": (12, 768, 12),
    "m": (16, 1024, 16),
    "l": (24, 1024, 16),
    "xl": (28, 1152, 16),
}


def dit_factory(size: str, patch_size: int):
    """Return a factory ``(input_size=32, in_channels=4, num_classes=1000) -> DiT`` of one size."""
    depth, hidden, heads = DIT_SIZES[size]

    def build(input_size: int = 32, in_channels: int = 4, num_classes: int = 1000,
              frequency_dim: int = 256, decoupled_depth: int = 0, log_variance: bool = False) -> DiT:
        return DiT(input_size=input_size, in_channels=in_channels, patch_size=patch_size,
                   hidden_size=hidden, depth=depth, num_heads=heads, num_classes=num_classes,
                   frequency_dim=frequency_dim, decoupled_depth=decoupled_depth, log_variance=log_variance)

    build.__doc__ = f"DiT-{size.upper()}/{patch_size}: depth {depth}, width {hidden}, {heads} heads."
    return build
