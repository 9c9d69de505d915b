"""The tangent of softmax attention, with and without the ``N x M`` score matrix.

For ``O = P V``, ``P = softmax(S)``, ``S = q k^T / sqrt(d)`` and tangents ``(dq, dk, dv)``::

    dS = (dq k^T + q dk^T) / sqrt(d)
    dO = (P . dS) V - rowsum(P . dS) O + P dV

Three implementations, equal to float tolerance:

* ``explicit``: builds ``P`` and ``P . dS`` as ``[B, H, N, M]`` tensors. Simple, fastest for few
  tokens, but its transient memory grows like ``N x M`` (the primal's fused kernel does not).
* ``tiled``: walks over blocks of ``block`` keys keeping flash-attention's running statistics per
  query (the running maximum ``m`` of the scores and the running sum ``l = sum exp(S - m)``), and
  three running sums rescaled by ``exp(m_old - m_new)`` whenever ``m`` grows::

      a_ds  = sum_j exp(S_j - m) dS_j                       [B, H, N, 1]
      a_out = sum_j exp(S_j - m) (dS_j V_j + dV_j)          [B, H, N, d]
      dO    = (a_out - a_ds O) / l

  The largest transient is ``[B, H, N, block]``: memory stays linear in the key count. The
  primal ``O`` is the fused kernel's output, reused.
* ``fused`` (CUDA with Triton only, `attention_triton`): the same recurrence in one kernel that
  also tiles the queries, so nothing of size ``N x block`` leaves the chip.

`attention_tangent` picks one (``impl="auto"``): ``fused`` on CUDA when Triton is importable and
the head size is supported, else ``explicit`` up to `EXPLICIT_MAX_KEYS` keys and ``tiled`` above.
`use_impl` overrides the choice for a block of code (benchmarks and tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

IMPLS = ("auto", "explicit", "tiled", "fused")
EXPLICIT_MAX_KEYS = 128
"""Key counts up to this use the explicit tangent under ``auto`` (one block of `tiled` is the same
arithmetic). Above it the tiled walk keeps the transient at ``N x DEFAULT_BLOCK`` and is also faster on
a CPU: a whole MeanFlow DiT step (width 192, 3 heads, batch 8, every row r != t, float32) measured
tiled / explicit 1.31x / 1.43x flow matching at 256 tokens and 1.64x / 1.70x at 1,024 with 1.04x / 1.42x
the memory. (On a GPU in float32 the explicit tangent is a little faster, the tiled one memory-safe.)"""
DEFAULT_BLOCK = 128

_override: list[tuple[str, int]] = []


@contextlib.contextmanager
def use_impl(impl: str, block: int = DEFAULT_BLOCK) -> Iterator[None]:
    """Within the block, every attention tangent uses ``impl`` (one of `IMPLS`) with ``block`` keys
    per tile. Nests; not thread-local (set it around a whole step)."""
    if impl not in IMPLS:
        raise ValueError(f"attention tangent impl must be one of {IMPLS}, got {impl!r}")
    if block < 1:
        raise ValueError(f"attention tangent block must be >= 1, got {block}")
    _override.append((impl, block))
    try:
        yield
    finally:
        _override.pop()


def attention_tangent(q: Tensor, k: Tensor, v: Tensor, o: Tensor, dq: Tensor, dk: Tensor, dv: Tensor,
                      impl: str = "auto", block: int = DEFAULT_BLOCK) -> Tensor:
    """``dO`` of ``O = softmax(q k^T / sqrt(d)) v`` along ``(dq, dk, dv)``, no gradient.

    Args:
        q, dq: ``[B, H, N, d]``; k, dk, v, dv: ``[B, H, M, d]``.
        o: the primal output ``[B, H, N, d]`` (reused, not recomputed).
        impl: one of `IMPLS` (`use_impl` overrides it).
        block: keys per tile of the tiled walk.

    Returns:
        ``dO [B, H, N, d]`` in ``o``'s dtype.
    """
    if _override:
        impl, block = _override[-1]
    if impl == "auto":
        impl = _auto(q, k)
    with torch.no_grad():
        if impl == "explicit":
            return explicit(q, k, v, o, dq, dk, dv)
        if impl == "tiled":
            return tiled(q, k, v, o, dq, dk, dv, block)
        if impl == "fused":
            from meanflow.networks.attention_triton import fused_tangent

            return fused_tangent(q, k, v, o, dq, dk, dv)
    raise ValueError(f"attention tangent impl must be one of {IMPLS}, got {impl!r}")


def _auto(q: Tensor, k: Tensor) -> str:
    if q.is_cuda:
        from meanflow.networks.attention_triton import available

        if available(q):
            return "fused"
    return "explicit" if k.shape[-2] <= EXPLICIT_MAX_KEYS else "tiled"


def explicit(q: Tensor, k: Tensor, v: Tensor, o: Tensor, dq: Tensor, dk: Tensor, dv: Tensor) -> Tensor:
    """The tangent through the full ``[B, H, N, M]`` softmax derivative."""
    scale = q.shape[-1] ** -0.5
    kt = k.transpose(-2, -1)
    p = torch.softmax((q @ kt) * scale, dim=-1)
    pds = dq @ kt
    pds = pds.add_(q @ dk.transpose(-2, -1)).mul_(p).mul_(scale)
    do = pds @ v
    return do.sub_(pds.sum(-1, keepdim=True) * o).add_(p @ dv)


def tiled(q: Tensor, k: Tensor, v: Tensor, o: Tensor, dq: Tensor, dk: Tensor, dv: Tensor,
          block: int = DEFAULT_BLOCK) -> Tensor:
    """The tangent by a walk over ``block`` keys at a time with online-softmax statistics.

    Statistics and sums are kept in float32 at least (float64 stays float64); the matrix products
    run in the inputs' dtype.
    """
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    scale = q.shape[-1] ** -0.5
    m_keys = k.shape[-2]
    # [dq, q] . [k, dk] = dq k^T + q dk^T: one product of inner size 2d per tile gives dS.
    qq = torch.cat([dq, q], dim=-1) * scale
    kk = torch.cat([k, dk], dim=-1)
    qs = q * scale
    shape = (*q.shape[:-1], 1)
    m = torch.full(shape, -torch.inf, dtype=acc_dtype, device=q.device)
    l_sum = torch.zeros(shape, dtype=acc_dtype, device=q.device)
    a_ds = torch.zeros(shape, dtype=acc_dtype, device=q.device)
    a_out = torch.zeros(o.shape, dtype=acc_dtype, device=q.device)
    for j in range(0, m_keys, block):
        sl = slice(j, min(j + block, m_keys))
        s = (qs @ k[..., sl, :].transpose(-2, -1)).to(acc_dtype)             # [B, H, N, b]
        ds = (qq @ kk[..., sl, :].transpose(-2, -1)).to(acc_dtype)           # [B, H, N, b]
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        p = s.sub_(m_new).exp_()                                             # exp(S - m_new)
        x = ds.mul_(p)                                                       # exp(S - m_new) dS
        if j:
            alpha = (m - m_new).exp_()
            l_sum.mul_(alpha)
            a_ds.mul_(alpha)
            a_out.mul_(alpha)
        l_sum.add_(p.sum(-1, keepdim=True))
        a_ds.add_(x.sum(-1, keepdim=True))
        a_out.add_(x.to(v.dtype) @ v[..., sl, :]).add_(p.to(dv.dtype) @ dv[..., sl, :])
        m = m_new
    return a_out.sub_(a_ds * o).div_(l_sum).to(o.dtype)
