"""A residual MLP for 2-D toy data (and any input, flattened), conditioned on t, h and a class.

    c   = E_t(t) + E_h(h) [+ E_y(y)] [+ E_w(1 - 1/w) + E_a(t_min) + E_b(t_max)]   # [B, hidden]
    x_0 = W_in flatten(z)
    x_i = x_{i-1} + W_2 silu(W_1 silu(x_{i-1}) + W_c c)    # i = 1..depth
    out = W_out silu(x_depth)                              # reshaped to z's shape

The optional guidance terms (``guidance_cond=True``, for improved MeanFlow) embed a per-sample
guidance scale ``w >= 1`` and guidance interval ``[t_min, t_max]`` given as
``net(..., guidance=g)`` with ``g = [w, t_min, t_max]`` of shape ``[B, 3]``. The scale enters as
``1 - 1/w`` in ``[0, 1)``, as in the official iMF DiT (``omega_embedder(1 - 1 / w)`` in
``Lyy-iiis/imeanflow`` ``models/imfDiT.py``). These inputs have no tangent: in tangent mode the
derivative is along ``(z, t, h)`` only.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.networks import layers as L
from meanflow.networks.base import TangentNet
from meanflow.networks.embeddings import LabelEmbedder, LogVarianceHead, TimestepEmbedder, block_conditions


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
        guidance_cond: also condition on ``guidance = [w, t_min, t_max]`` ``[B, 3]`` (a required
            keyword input then; see the module docstring).
        decoupled_depth: 0, or Decoupled MeanFlow's split: the first ``k`` blocks are conditioned on t,
            the later ones on ``r = t - h`` (see ``embeddings.block_conditions``).
        log_variance: add DMF's zero-initialised head ``logvar(t, h) -> [B]`` (not part of ``forward``).
    """

    fresh_parameters = ("logvar.",)
    """Parameters that start from their initialisation when ``--init-from`` loads another run."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, num_classes: int = 0,
                 frequency_dim: int = 64, guidance_cond: bool = False, decoupled_depth: int = 0,
                 log_variance: bool = False):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise UserError(f"mlp needs dim, hidden, depth >= 1, got {dim}, {hidden}, {depth}")
        if not 0 <= decoupled_depth < depth:
            raise UserError(f"mlp decoupled_depth must be in [0, depth = {depth}), got {decoupled_depth}")
        self.decoupled_depth = decoupled_depth
        self.logvar = LogVarianceHead() if log_variance else None
        self.dim = dim
        self.num_classes = num_classes
        self.t_embedder = TimestepEmbedder(hidden, frequency_dim)
        self.h_embedder = TimestepEmbedder(hidden, frequency_dim)
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes > 0 else None
        if not isinstance(guidance_cond, bool):
            raise UserError(f"mlp guidance_cond must be true or false, got {guidance_cond!r}")
        self.guidance_cond = guidance_cond
        # One embedder each for 1 - 1/w, t_min and t_max (absent unless guidance_cond).
        self.g_embedders = (nn.ModuleList(TimestepEmbedder(hidden, frequency_dim) for _ in range(3))
                            if guidance_cond else None)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResBlock(hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        # Keep the residual stream at unit scale as depth grows.
        for blk in self.blocks:
            nn.init.normal_(blk.fc2.weight, std=1.0 / math.sqrt(hidden * depth))

    def pair_forward(self, z, t, h, y, dz, dt, dh, guidance: Tensor | None = None):
        b = z.shape[0]
        if z[0].numel() != self.dim:
            raise UserError(f"mlp built for dim={self.dim} got inputs of shape {tuple(z.shape)}")
        c, dc = block_conditions(self.t_embedder, self.h_embedder, self.y_embedder, t, h, y, dt, dh, b,
                                 z.device, len(self.blocks), self.decoupled_depth)
        g = self._guidance_embedding(guidance, b, z)  # constant in every tangent: dc unchanged
        x, dx = L.linear(self.inp, z.reshape(b, -1), None if dz is None else dz.flatten(1))
        for blk, ci, dci in zip(self.blocks, c, dc):
            x, dx = blk(x, dx, ci + g, dci)
        x, dx = L.silu(x, dx)
        x, dx = L.linear(self.out, x, dx)
        return x.reshape(z.shape), None if dx is None else dx.reshape(dz.shape)

    def _guidance_embedding(self, guidance: Tensor | None, b: int, like: Tensor) -> Tensor | float:
        """``E_w(1 - 1/w) + E_a(t_min) + E_b(t_max)`` ``[B, hidden]`` (0 without guidance_cond)."""
        if not self.guidance_cond:
            if guidance is not None:
                raise UserError("mlp got guidance inputs but was built without guidance_cond=True")
            return 0.0
        if guidance is None:
            raise UserError("mlp built with guidance_cond=True needs the keyword input guidance=[B, 3] "
                            "(omega, t_min, t_max)")
        if tuple(guidance.shape) != (b, 3):
            raise UserError(f"mlp guidance must have shape ({b}, 3), got {tuple(guidance.shape)}")
        g = guidance.to(like.device, like.dtype)
        feats = (1 - 1 / g[:, 0], g[:, 1], g[:, 2])
        return sum(emb(f)[0] for emb, f in zip(self.g_embedders, feats))
