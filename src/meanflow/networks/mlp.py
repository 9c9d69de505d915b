"""A residual MLP for 2-D toy data (and any input, flattened), conditioned on t, h and a class.

    c   = E_t(t) + E_h(h) [+ E_y(y)]                       # [B, hidden]
    x_0 = W_in flatten(z)
    x_i = x_{i-1} + W_2 silu(W_1 silu(x_{i-1}) + W_c c)    # i = 1..depth
    out = W_out silu(x_depth)                              # reshaped to z's shape
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.networks import layers as L
from meanflow.networks.base import TangentNet
from meanflow.networks.embeddings import LabelEmbedder, TimestepEmbedder, summed_condition


class _ResBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.cond = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, dx: Tensor | None, c: Tensor, dc: Tensor | None) -> L.Pair:
        a, da = L.silu(x, dx)
        a, da = L.linear(self.fc1, a, da)
        b, db = L.linear(self.cond, c, dc)
        a = a + b
        if da is not None:
            da = da + db
        a, da = L.silu(a, da)
        a, da = L.linear(self.fc2, a, da)
        return x + a, None if dx is None else dx + da


class MLP(TangentNet):
    """Residual MLP ``net(z, t, h, y)`` for inputs of ``dim`` features (any ``[B, *S]``).

    Args:
        dim: number of features of one flattened input, ``prod(S)``.
        hidden: width of the hidden layers and the conditioning vector.
        depth: number of residual blocks.
        num_classes: 0 for unconditional, else class ids ``[0, num_classes]`` (last = null).
        frequency_dim: number of sinusoidal time features.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, num_classes: int = 0,
                 frequency_dim: int = 64):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise UserError(f"mlp needs dim, hidden, depth >= 1, got {dim}, {hidden}, {depth}")
        self.dim = dim
        self.num_classes = num_classes
        self.t_embedder = TimestepEmbedder(hidden, frequency_dim)
        self.h_embedder = TimestepEmbedder(hidden, frequency_dim)
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes > 0 else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResBlock(hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        # Keep the residual stream at unit scale as depth grows.
        for blk in self.blocks:
            nn.init.normal_(blk.fc2.weight, std=1.0 / math.sqrt(hidden * depth))

    def pair_forward(self, z, t, h, y, dz, dt, dh):
        b = z.shape[0]
        if z[0].numel() != self.dim:
            raise UserError(f"mlp built for dim={self.dim} got inputs of shape {tuple(z.shape)}")
        c, dc = summed_condition(self.t_embedder, self.h_embedder, self.y_embedder, t, h, y, dt, dh, b,
                                 z.device)
        x, dx = L.linear(self.inp, z.reshape(b, -1), None if dz is None else dz.reshape(b, -1))
        for blk in self.blocks:
            x, dx = blk(x, dx, c, dc)
        x, dx = L.silu(x, dx)
        x, dx = L.linear(self.out, x, dx)
        return x.reshape(z.shape), None if dx is None else dx.reshape(z.shape)
