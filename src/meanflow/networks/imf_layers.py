"""Tangent-aware layers of the improved-MeanFlow DiT: RMSNorm, rotary embedding, RoPE attention, SwiGLU.

Same ``(x, dx) -> (y, dy)`` convention as :mod:`meanflow.networks.layers` (``dx = None``: plain path,
only ops with forward-AD rules, so ``torch.func.jvp`` works on it). Tangent formulas:

* RMSNorm:   ``y = w . x r``, ``r = (<x^2> + eps)^(-1/2)``, ``dy = w . r (dx - x r^2 <x dx>)``
  (``<.>`` is the mean over the last axis);
* rotation:  ``y = R x`` is linear in ``x`` (fixed angles), so ``dy = R dx``;
* SwiGLU:    ``y = W_2 (silu(a) . b)``, ``[a, b] = W_13 x``, ``dy = W_2 (silu'(a) da . b + silu(a) . db)``;
* attention: :func:`meanflow.networks.layers.attention` (softmax derivative, reusing the output).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from meanflow.networks import layers as L


def rms_norm(x: Tensor, dx: Tensor | None, weight: Tensor | None, eps: float = 1e-6) -> L.Pair:
    """Root-mean-square normalisation over the last axis with its tangent.

    Args:
        x: input ``[..., D]``.
        dx: tangent of ``x`` or None.
        weight: per-channel gain ``[D]`` or None.
        eps: added to the mean square.

    Returns:
        ``(y, dy)``, both ``[..., D]``.
    """
    r = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    y = x * r
    if weight is not None:
        y = y * weight
    if dx is None:
        return y, None
    with torch.no_grad():
        x, r = L.lead(x, dx), L.lead(r, dx)
        proj = (x * dx).mean(-1, keepdim=True) * r.square()
        dy = (dx - x * proj) * r
        if weight is not None:
            dy = dy * weight
    return y, dy


class RMSNorm(nn.Module):
    """Parameter holder for :func:`rms_norm` (gain initialised to one, eps ``1e-6`` as the official code)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, dx: Tensor | None = None) -> L.Pair:
        """``(x, dx) -> (y, dy)``, shapes ``[..., dim]``."""
        return rms_norm(x, dx, self.weight, self.eps)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive channel pairs ``(x_2i, x_2i+1)`` of ``x [B, H, N, d]`` by per-token angles.

    ``cos``, ``sin`` are ``[N, d/2]``. Linear in ``x``: the same call maps a tangent.
    """
    x2 = x.unflatten(-1, (-1, 2))
    a, b = x2[..., 0], x2[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


class RoPEAttention(nn.Module):
    """Multi-head self-attention with QK RMS-norm (per head) and rotary position embedding.

    Projections have no bias (official ``RoPEAttention``); ``q, k, v`` are one fused linear.
    """

    muon_row_blocks = {"qkv.weight": 3}
    """``qkv.weight`` stacks the q, k and v matrices (rows); Muon orthogonalises each on its own, as the
    official separate linears (see :mod:`meanflow.training.muon`)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # [B, N, 3 D] -> 3 x [B, H, N, d]
        b, n, _ = x.shape
        return x.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: Tensor, dx: Tensor | None, cos: Tensor, sin: Tensor) -> L.Pair:
        """Tokens ``x [B, N, D]`` (tangent ``dx``), rotation tables ``[N, d/2]`` -> ``(y, dy)``."""
        qkv, dqkv = L.linear(self.qkv, x, dx)
        q, k, v = self._heads(qkv)
        dq = dk = dv = None
        if dqkv is not None:
            dq, dk, dv = self._heads(dqkv)
        q, dq = self.q_norm(q, dq)
        k, dk = self.k_norm(k, dk)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if dq is not None:
            with torch.no_grad():
                dq, dk = rotate(dq, cos, sin), rotate(dk, cos, sin)
        return L.linear(self.proj, *L.merge_heads(*L.attention(q, k, v, dq, dk, dv)))


class SwiGLU(nn.Module):
    """``y = W_2 (silu(W_1 x) . W_3 x)`` without biases; ``W_1`` and ``W_3`` are one fused linear."""

    muon_row_blocks = {"w13.weight": 2}
    """``w13.weight`` stacks ``W_1`` and ``W_3`` (rows): two matrices for Muon (see ``RoPEAttention``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor, dx: Tensor | None = None) -> L.Pair:
        """``(x, dx) -> (y, dy)``, shapes ``[..., dim]``."""
        ab, dab = L.linear(self.w13, x, dx)
        a, b = ab.split(self.hidden, dim=-1)
        da, db = dab.split(self.hidden, dim=-1) if dab is not None else (None, None)
        a, da = L.silu(a, da)
        a, da = L.mul(a, da, b, db)
        return L.linear(self.w2, a, da)


class IMFBlock(nn.Module):
    """Pre-norm block with zero-initialised per-channel residual gates (official ``TransformerBlock``)::

        x = x + g_attn . Attn(RMSNorm(x))
        x = x + g_mlp  . SwiGLU(RMSNorm(x))
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = RoPEAttention(dim, num_heads)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio))
        self.attn_scale = nn.Parameter(torch.zeros(dim))
        self.mlp_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, dx: Tensor | None, cos: Tensor, sin: Tensor) -> L.Pair:
        """Tokens ``x [B, N, D]`` with tangent -> ``(x, dx)`` of the same shape."""
        a, da = self.norm1(x, dx)
        a, da = self.attn(a, da, cos, sin)
        x, dx = self._residual(x, dx, a, da, self.attn_scale)
        a, da = self.norm2(x, dx)
        a, da = self.mlp(a, da)
        return self._residual(x, dx, a, da, self.mlp_scale)

    @staticmethod
    def _residual(x: Tensor, dx: Tensor | None, a: Tensor, da: Tensor | None, gate: Tensor) -> L.Pair:
        y = x + a * gate
        if dx is None:
            return y, None
        with torch.no_grad():
            return y, dx + da * gate
