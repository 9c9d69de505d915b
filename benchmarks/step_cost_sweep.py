"""``step_cost.py --sweep``: MeanFlow's attention-tangent paths against flow matching across token counts
and batches on a DiT (see the docstring of ``benchmarks/step_cost.py``).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.step_cost_common import interleaved_medians, make_step, peak_bytes
from meanflow.methods import FlowMatching, MeanFlow
from meanflow.networks import attention_tangent, build_network

STEP_COST = str(Path(__file__).with_name("step_cost.py"))
# ---------------------------------------------------------------------------------------------------
# --sweep: the attention tangent paths of MeanFlow across token counts and batches

SWEEP_DIT = dict(in_channels=4, patch_size=2, hidden_size=192, depth=4, num_heads=3, num_classes=0)
SWEEP_MODES = ("fm", "mf-explicit", "mf-tiled", "mf-fused", "fm-compiled", "mf-compiled", "mf-naive")
"""``mf-<impl>``: MeanFlow through the tangent mode with that attention tangent; ``mf-compiled``: the
``auto`` choice (fused on CUDA, tiled above 128 keys on CPU) under torch.compile; ``mf-naive``: the
official code's torch.func.jvp through the network (tangent mode hidden)."""


def sweep_net(tokens: int, device: str) -> tuple[nn.Module, tuple[int, ...]]:
    side = round(tokens ** 0.5)
    if side * side != tokens:
        raise SystemExit(f"--tokens must be squares (a square grid of patches), got {tokens}")
    torch.manual_seed(0)
    net = build_network("dit", input_size=2 * side, **SWEEP_DIT).to(device)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net, (4, 2 * side, 2 * side)


def sweep_step(mode: str, net: nn.Module, x: torch.Tensor, bf16: bool = False, ratio: float | None = None):
    """One training step closure of a sweep mode (its own Adam), or None where it cannot run here.

    ``ratio``: fraction of the batch with ``r != t`` in the MeanFlow modes (None: ``MeanFlow()``'s default).
    """
    compiled = mode.endswith("compiled")
    base = "fm" if mode.startswith("fm") else ("mf-naive" if mode == "mf-naive" else "mf")
    impl = mode.split("-")[1] if base == "mf" and not compiled else "auto"
    if impl == "fused":
        from meanflow.networks.attention_triton import available

        dtype = torch.bfloat16 if bf16 else x.dtype
        if not available(torch.empty(1, 1, 1, 64, device=x.device, dtype=dtype)):
            return None
    step = make_step(base, net, x, compiled, ratio)[0]

    def run():
        with attention_tangent.use_impl(impl), torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            step()

    return run


def sweep_memory(tokens: int, mode: str, batch: int, iters: int, device: str, bf16: bool,
                 ratio: float | None = None) -> dict:
    """Fresh process: peak memory of ``iters`` steps of one sweep mode above the post-setup baseline."""
    net, shape = sweep_net(tokens, device)
    x = torch.randn(batch, *shape, device=device)
    run = sweep_step(mode, net, x, bf16, ratio)
    return {"peak_bytes": peak_bytes(run, iters, device)}


def loss_flops(method, net: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one loss forward + backward of ``method`` on ``net`` (torch's ``FlopCounterMode``:
    matrix products and convolutions), seeded so that every method draws the same noise and times.

    Attention runs under the math SDPA backend, i.e. as matmuls that the counter sees: the CPU fused
    kernel (``aten._scaled_dot_product_flash_attention_for_cpu``) and its backward have no FLOP formula
    registered in torch 2.x and count 0. The attention tangent is ``explicit`` (the same products as
    ``tiled`` and ``fused``: five ``N x M x d`` per head, the scores recomputed)."""
    torch.manual_seed(0)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), attention_tangent.use_impl("explicit"), counter:
        method.loss(net, x).loss.backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def sweep_flops(net: nn.Module, x: torch.Tensor, ratio: float) -> dict:
    """FLOPs of one flow-matching and one MeanFlow(ratio) loss forward + backward, and their ratio: the
    arithmetic floor of the MF / FM step-time ratio (the Adam step has no products and is left out)."""
    fm = loss_flops(FlowMatching(), net, x)
    mf = loss_flops(MeanFlow(ratio=ratio), net, x)
    return {"fm_flops": fm, "mf_flops": mf, "floor": mf / fm}


def n_neq(ratio: float, batch: int) -> int:
    """Rows of a batch with ``r != t``: ``round(ratio * batch)`` (Python rounding, as MeanFlow's mask)."""
    return int(round(ratio * batch))


def warn_no_neq(ratio: float, batches: list[int]) -> None:
    zero = [b for b in batches if ratio > 0 and n_neq(ratio, b) == 0]
    if zero:
        print(f"warning: --ratio {ratio:g} gives round(ratio * batch) = 0 rows with r != t at batch "
              f"{','.join(map(str, zero))}: those MeanFlow steps have no r != t sample")


def sweep_grid(args, hdr: str):
    """Warn about batches without r != t rows, print the table header ``hdr``, then yield
    ``(tokens, batch, net, x)`` for every configuration of ``--tokens`` x ``--batches``."""
    batches = [int(s) for s in args.batches.split(",")]
    warn_no_neq(args.ratio, batches)
    print(hdr)
    print("-" * len(hdr))
    for n in (int(s) for s in args.tokens.split(",")):
        for b in batches:
            net, shape = sweep_net(n, args.device)
            yield n, b, net, torch.randn(b, *shape, device=args.device)


def sweep_flops_only(args) -> None:
    """``--flops-only``: the FLOP floor table alone (no timing, no memory)."""
    print(f"FLOP floor: DiT {SWEEP_DIT}; MeanFlow ratio {args.ratio:g}; FLOPs of one loss forward + backward "
          f"(FlopCounterMode), attention under the math SDPA backend, attention tangent 'explicit'")
    hdr = f"{'tokens':>6s} {'batch':>5s} {'r!=t':>4s} {'FM GFLOP':>9s} {'MF GFLOP':>9s} {'FLOP floor':>10s}"
    for n, b, net, x in sweep_grid(args, hdr):
        f = sweep_flops(net, x, args.ratio)
        print(f"{n:6d} {b:5d} {n_neq(args.ratio, b):4d} {f['fm_flops'] / 1e9:9.3f} "
              f"{f['mf_flops'] / 1e9:9.3f} {f['floor']:10.2f}", flush=True)


def sweep(args) -> None:
    batches = [int(s) for s in args.batches.split(",")]
    modes = [m for m in args.modes.split(",")] if args.modes else list(SWEEP_MODES)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    prec = 'bf16 autocast' if args.bf16 else 'float32'
    print(f"sweep: DiT {SWEEP_DIT}; {prec}; torch {torch.__version__}, "
          f"device {args.device}, threads "
          f"{args.threads}, {args.iters} timed steps per mode (median, interleaved), peak memory over "
          f"{args.mem_iters} steps in a fresh process (eager modes)")
    print(f"MeanFlow ratio {args.ratio:g}: r != t rows per batch "
          f"{', '.join(f'{n_neq(args.ratio, b)}/{b}' for b in batches)}; FLOP floor = FLOPs of one MF / one "
          f"FM loss forward + backward (math SDPA, explicit tangent: the tangent mode's; mf-naive does more)")
    hdr = (f"{'tokens':>6s} {'batch':>5s} {'r!=t':>4s} {'mode':12s} {'step ms':>9s} {'x FM':>5s} "
           f"{'FLOP floor':>10s} {'peak MiB':>9s} {'x FM':>5s}")
    for n, b, net, x in sweep_grid(args, hdr):
        floor = sweep_flops(copy.deepcopy(net), x, args.ratio)["floor"]
        neq = n_neq(args.ratio, b)
        steps = {}
        for m in modes:
            try:
                run = sweep_step(m, copy.deepcopy(net), x, args.bf16, args.ratio)
                if run is not None:
                    run()
                    run()  # warm-up (and compilation)
                    steps[m] = run
            except Exception as exc:  # report, do not hide: compile support is platform-dependent
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                msg = " | ".join(lines[-3:])[:400]
                print(f"{n:6d} {b:5d} {'-':>4s} {m:12s} FAILED {type(exc).__name__}: {msg}")
        t = interleaved_medians(steps, args.iters, args.device)
        mem = {}
        for m in steps:
            if m.endswith("compiled"):
                continue
            cmd = [sys.executable, STEP_COST, "--worker", f"sweep-{n}", m, "--batch", str(b),
                   "--mem-iters", str(args.mem_iters), "--device", args.device, "--threads",
                   str(args.threads), "--ratio", repr(args.ratio), *(["--bf16"] if args.bf16 else []),
                   *(["--jvp-autocast"] if args.jvp_autocast else [])]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode == 0:
                mem[m] = json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"]
        for m in steps:
            ref = "fm-compiled" if m.endswith("compiled") else "fm"
            ratio = t[m] / t[ref] if ref in t else float("nan")
            peak = mem.get(m)
            mtxt = f"{peak / 2**20:9.1f} {peak / mem['fm']:5.2f}" if peak and mem.get("fm") else (
                f"{'-':>9s} {'-':>5s}")
            ntxt, ftxt = ("-", "-") if m.startswith("fm") else (str(neq), f"{floor:.2f}")
            print(f"{n:6d} {b:5d} {ntxt:>4s} {m:12s} {t[m] * 1e3:9.1f} {ratio:5.2f} {ftxt:>10s} {mtxt}",
                  flush=True)
        print(flush=True)
