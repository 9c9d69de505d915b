"""Time and memory of one attention tangent, per implementation, against the fused SDPA forward.

For ``q, k, v [B, H, N, d]`` and their tangents, prints the median time of: the primal forward
(``F.scaled_dot_product_attention``), the explicit ``N x N`` tangent, the tiled walk over keys, and on
CUDA the fused Triton kernel at several tile shapes; with the largest error of each against the
explicit tangent in float64 and the peak memory each call allocates above its inputs (CUDA).

Usage::

    python benchmarks/attention_tangent.py                       # CPU, float32
    python benchmarks/attention_tangent.py --device cuda --dtype bfloat16 --tokens 256,1024,4096
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from meanflow.networks import attention_tangent as A


def timed(fn, iters: int, device: str) -> float:
    fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_mib(fn, device: str) -> float:
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_tokens(n: int, args, dtype: torch.dtype) -> None:
    """One line per path for ``n`` tokens."""
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (args.batch, args.heads, n, args.head_dim)
    q, k, v, dq, dk, dv = (torch.randn(shape, generator=g).to(args.device, dtype) for _ in range(6))
    o = F.scaled_dot_product_attention(q, k, v)
    ref = A.explicit(*(x.double() for x in (q, k, v, o, dq, dk, dv)))
    paths = {"sdpa forward (primal)": lambda: F.scaled_dot_product_attention(q, k, v),
             "explicit": lambda: A.explicit(q, k, v, o, dq, dk, dv),
             "tiled (128 keys)": lambda: A.tiled(q, k, v, o, dq, dk, dv, 128),
             "tiled (512 keys)": lambda: A.tiled(q, k, v, o, dq, dk, dv, 512)}
    if args.device == "cuda":
        from meanflow.networks.attention_triton import available, fused_tangent

        if available(q, (torch.float16, torch.bfloat16, torch.float32)):
            for bm, bn, w in ((64, 64, 4), (64, 32, 4), (128, 64, 8), (32, 32, 4)):
                paths[f"fused {bm}x{bn} w{w}"] = (
                    lambda bm=bm, bn=bn, w=w: fused_tangent(q, k, v, o, dq, dk, dv, bm, bn, w))
    fwd = None
    for name, fn in paths.items():
        try:
            with torch.no_grad():
                sec = timed(fn, args.iters, args.device)
                out = fn()
                mem = peak_mib(fn, args.device)
        except Exception as exc:  # report, do not hide (e.g. a Triton build failure)
            print(f"{n:6d} {name:24s} FAILED {type(exc).__name__}: {str(exc)[:120]}")
            continue
        fwd = fwd or sec
        err = float("nan") if name.startswith("sdpa") else float(
            (out.double() - ref).abs().max() / ref.abs().max())
        print(f"{n:6d} {name:24s} {sec * 1e3:8.2f} {sec / fwd:6.2f} {err:9.2e} {mem:9.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--tokens", default="64,256,1024")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {args.device}, {args.dtype}, batch {args.batch}, heads {args.heads}, "
          f"head dim {args.head_dim}; median of {args.iters}; err = max |dO - dO_ref| / max |dO_ref| against "
          "the explicit tangent in float64; peak = CUDA memory allocated by the call above its inputs")
    print(f"{'tokens':>6s} {'path':24s} {'ms':>8s} {'x fwd':>6s} {'err':>9s} {'peak MiB':>9s}")
    for n in (int(s) for s in args.tokens.split(",")):
        bench_tokens(n, args, dtype)
        print()


if __name__ == "__main__":
    main()
