"""A fused CUDA kernel (Triton) for the attention tangent; optional.

One program handles ``BLOCK_M`` queries of one (batch, head) and walks over the keys ``BLOCK_N`` at
a time, with the recurrence of `attention_tangent.tiled` kept in registers (float32)::

    s  = q k^T / sqrt(d),   ds = (dq k^T + q dk^T) / sqrt(d)          [BLOCK_M, BLOCK_N]
    m' = max(m, rowmax s),  a = exp(m - m'),  p = exp(s - m')
    l  = a l + rowsum p,    g = a g + rowsum(p ds),   acc = a acc + (p ds) v + p dv
    dO = (acc - g O) / l

so no ``N x M`` tensor exists outside the chip. Inputs are made contiguous as ``[B H, N, d]``; the
head size must be 16, 32, 64 or 128. Float32 inputs use IEEE products (no TF32), half types their
own tensor-core products with float32 accumulation.

Without Triton or CUDA, `available` is False and `attention_tangent` never dispatches here.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # Triton ships with CUDA builds of PyTorch; CPU wheels have none.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16)
"""Half types only: float32 has no tensor-core product without TF32, and with IEEE products the kernel
is slower than the tiled walk (measured on an H100, see README), so float32 stays on `tiled`."""


def available(q: Tensor, dtypes: tuple[torch.dtype, ...] = DTYPES) -> bool:
    """Whether `fused_tangent` runs on tensors like ``q [B, H, N, d]`` (``dtypes``: those allowed)."""
    return triton is not None and q.is_cuda and q.shape[-1] in HEAD_DIMS and q.dtype in dtypes


if triton is not None:

    @triton.jit
    def _tangent_kernel(Q, K, V, O, DQ, DK, DV, DO, n_q, n_k, scale,
                        s_qb, s_qn, s_kb, s_kn,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                        IEEE: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        rows = offs_m < n_q
        q_off = bh * s_qb + offs_m[:, None] * s_qn + offs_d[None, :]
        q = tl.load(Q + q_off, mask=rows[:, None], other=0.0)
        dq = tl.load(DQ + q_off, mask=rows[:, None], other=0.0)
        o = tl.load(O + q_off, mask=rows[:, None], other=0.0).to(tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        g_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for start in range(0, n_k, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            cols = offs_n < n_k
            k_off = bh * s_kb + offs_n[:, None] * s_kn + offs_d[None, :]
            k = tl.load(K + k_off, mask=cols[:, None], other=0.0)
            dk = tl.load(DK + k_off, mask=cols[:, None], other=0.0)
            v = tl.load(V + k_off, mask=cols[:, None], other=0.0)
            dv = tl.load(DV + k_off, mask=cols[:, None], other=0.0)
            kt, dkt = tl.trans(k), tl.trans(dk)
            if IEEE:
                s = tl.dot(q, kt, input_precision="ieee")
                ds = tl.dot(dq, kt, input_precision="ieee") + tl.dot(q, dkt, input_precision="ieee")
            else:
                s = tl.dot(q, kt)
                ds = tl.dot(dq, kt) + tl.dot(q, dkt)
            # float32 casts: under torch.compile inductor passes ``scale`` as a float64 scalar.
            s = tl.where(cols[None, :], s * scale, float("-inf")).to(tl.float32)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            x = (p * (ds * scale)).to(tl.float32)
            l_i = l_i * alpha + tl.sum(p, 1)
            g_i = g_i * alpha + tl.sum(x, 1)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(x, v, input_precision="ieee") + tl.dot(
                    p, dv, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(x.to(v.dtype), v) + tl.dot(p.to(dv.dtype), dv)
            m_i = m_new
        do = (acc - g_i[:, None] * o) / l_i[:, None]
        tl.store(DO + q_off, do.to(DO.dtype.element_ty), mask=rows[:, None])


def fused_tangent(q: Tensor, k: Tensor, v: Tensor, o: Tensor, dq: Tensor, dk: Tensor, dv: Tensor,
                  block_m: int = 64, block_n: int | None = None, num_warps: int = 4) -> Tensor:
    """``dO [B, H, N, d]`` of softmax attention along ``(dq, dk, dv)`` (see the module docstring).

    Args:
        q, dq, o: ``[B, H, N, d]``; k, dk, v, dv: ``[B, H, M, d]``; on CUDA (float32 runs with IEEE
            products when called directly; `attention_tangent` sends only half types here).
        block_m, block_n, num_warps: tile sizes and warps of one program.
    """
    if not available(q, (*DTYPES, torch.float32)):
        raise RuntimeError("the fused attention tangent needs Triton, CUDA, head size in "
                           f"{HEAD_DIMS} and a float dtype; got {q.device}, d={q.shape[-1]}, {q.dtype}")
    b, h, n, d = q.shape
    m = k.shape[-2]

    def flat(x: Tensor, rows: int) -> Tensor:
        return x.to(q.dtype).reshape(b * h, rows, d).contiguous()

    q3, dq3, o3 = flat(q, n), flat(dq, n), flat(o, n)
    k3, dk3, v3, dv3 = flat(k, m), flat(dk, m), flat(v, m), flat(dv, m)
    out = torch.empty_like(q3)
    block_n = block_n or (64 if d <= 64 else 32)
    ieee = q.dtype == torch.float32
    grid = (triton.cdiv(n, block_m), b * h)
    _tangent_kernel[grid](q3, k3, v3, o3, dq3, dk3, dv3, out, n, m, d ** -0.5,
                          q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1),
                          BLOCK_M=block_m, BLOCK_N=block_n, D=d, IEEE=ieee, num_warps=num_warps)
    return out.reshape(b, h, n, d).to(o.dtype)
