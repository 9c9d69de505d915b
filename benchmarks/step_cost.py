"""What a MeanFlow training step costs next to flow matching, on the same network.

For a small DiT on 32x32x4 latents and a small U-Net on 32x32x3 images, at a fixed batch, prints:

* median time of one training step (forward + backward + Adam step) for flow matching (FM),
  MeanFlow through the network's tangent mode (MF) and MeanFlow through ``torch.func.jvp``
  with the tangent mode hidden (MF-naive), and the ratios to FM. The three are timed
  *interleaved in one process* (FM, MF, MF-naive, FM, ...) so that load from other processes on
  a shared machine hits them alike;
* memory, each case in a *fresh subprocess*:
  - ``peak``: peak resident memory (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``)
    during the measured steps minus the resident memory after setup and one warm-up step
    (network, data, gradients and Adam state allocated), with ``MALLOC_MMAP_THRESHOLD_`` set so
    that freed tensors go back to the OS and RSS tracks live memory (CUDA:
    ``torch.cuda.max_memory_allocated`` above the same baseline);
  - ``saved``: bytes of the tensors autograd saves for backward during one loss evaluation
    (``torch.autograd.graph.saved_tensors_hooks``, unique storages, parameters excluded): the
    activation memory the method adds, independent of the allocator;
* 1-step MeanFlow sampling throughput against a bare ``net(z, t, h)`` forward (interleaved);
* with ``--compile``: the same step ratios with the loss under ``torch.compile`` (slow to build on
  CPU: minutes);
* with ``--sweep``: a DiT (width 192, depth 4, 3 heads of 64, patch 2) at a range of token counts
  and batches, each MeanFlow attention-tangent path against flow matching on the same net: the
  explicit ``N x N`` tangent, the tiled walk over keys, the fused Triton kernel (CUDA), the loss
  under ``torch.compile`` (ratio to compiled flow matching) and the official code's route
  (``torch.func.jvp`` through the network). Time interleaved in one process per configuration;
  peak memory per eager mode in a fresh process. The MeanFlow steps use ``MeanFlow(ratio=--ratio)``
  (default 1.0: every row has ``r != t``; the table gives ``round(ratio * batch)``, the rows whose
  tangent is computed). Beside each time ratio, the *FLOP floor*: FLOPs of one MeanFlow loss forward
  + backward over those of one flow-matching loss forward + backward on the same net and batch,
  counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions) with
  attention under the math SDPA backend (the CPU fused kernel and its backward count 0 FLOPs) and
  the ``explicit`` attention tangent (the same products as ``tiled`` and ``fused``). It is the
  tangent mode's arithmetic: ``mf-naive`` does more (``torch.func.jvp`` differentiates every row and
  adds products of its own). It bounds the time ratio only where the step is matmul-bound: the Adam
  update and elementwise work are left out of the count, and where they weigh (few tokens, small
  batches, ``torch.compile`` trimming MeanFlow's elementwise overhead) a measured ratio can fall
  below it. ``--flops-only`` prints just the FLOP counts and floors (no timing: seconds). With
  ``--bf16`` every step runs under bf16 autocast, but MeanFlow's JVP stays float32 as published
  unless ``--jvp-autocast`` (``MeanFlow(jvp_precision="autocast")``) lets it follow the autocast.

Usage::

    python benchmarks/step_cost.py                      # CPU defaults: batch 16, 1 thread
    python benchmarks/step_cost.py --device cuda --batch 64 --iters 30
    python benchmarks/step_cost.py --profile            # where the MF step's extra time goes
    python benchmarks/step_cost.py --methods all        # every method (benchmarks/step_cost_methods.py)
    python benchmarks/step_cost.py --sweep --tokens 64,256,1024 --batches 4 --iters 5
    python benchmarks/step_cost.py --sweep --device cuda --bf16 --jvp-autocast --batches 32
    python benchmarks/step_cost.py --sweep --tokens 256 --batches 8 --ratio 0.25 --modes fm,mf-tiled
    python benchmarks/step_cost.py --sweep --flops-only --tokens 64,256,1024 --batches 8 --ratio 0.25
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import step_cost_common as common  # noqa: E402
from benchmarks.step_cost_common import (  # noqa: E402
    MODES,
    NETS,
    build,
    interleaved_medians,
    make_step,
    peak_bytes,
    saved_tensor_bytes,
)
from meanflow.methods import MeanFlow  # noqa: E402


def worker_memory(net_key: str, mode: str, batch: int, iters: int, device: str) -> dict:
    """Runs in a fresh process: memory of ``iters`` steps of one mode above the post-setup baseline."""
    net = build(net_key, device)
    x = torch.randn(batch, *NETS[net_key]["shape"], device=device)
    step, method, target = make_step(mode, net, x)
    peak = peak_bytes(step, iters, device)
    saved = saved_tensor_bytes(method, target, net, x)
    return {"peak_bytes": peak, "saved_bytes": saved}


def time_steps(net_key: str, batch: int, iters: int, device: str, compiled: bool) -> dict:
    """Median step time of each mode, interleaved in this process, each mode on its own net copy."""
    base = build(net_key, device)
    x = torch.randn(batch, *NETS[net_key]["shape"], device=device)
    steps = {m: make_step(m, copy.deepcopy(base), x, compiled)[0] for m in MODES}
    for s in steps.values():  # warm-up (and compilation)
        s()
        s()
    return interleaved_medians(steps, iters, device)


@torch.no_grad()
def time_sampling(net_key: str, batch: int, iters: int, device: str) -> dict:
    """Median time of a bare forward and of 1-step MeanFlow sampling, interleaved."""
    net = build(net_key, device).eval()
    e = torch.randn(batch, *NETS[net_key]["shape"], device=device)
    ones = torch.ones(batch, device=device)
    method = MeanFlow()
    fns = {"forward": lambda: net(e, ones, ones), "mf-1step": lambda: method.sample(net, e)}
    for f in fns.values():
        f()
    return interleaved_medians(fns, iters, device)




def profile(net_key: str, batch: int, device: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    net = build(net_key, device)
    x = torch.randn(batch, *NETS[net_key]["shape"], device=device)
    for mode in ("fm", "mf"):
        step = make_step(mode, copy.deepcopy(net), x)[0]
        step()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with tprofile(activities=acts) as prof:
            for _ in range(3):
                step()
        key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        print(f"\n--- profile {net_key} {mode} (3 steps, top ops by self time) ---")
        print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=40))


def run_worker(args) -> None:
    torch.set_num_threads(args.threads)
    if args.worker[0].startswith("sweep-"):
        from benchmarks.step_cost_sweep import sweep_memory

        tokens = int(args.worker[0].split("-")[1])
        print(json.dumps(sweep_memory(tokens, args.worker[1], args.batch, args.mem_iters, args.device,
                                      args.bf16, args.ratio)))
        return
    print(json.dumps(worker_memory(args.worker[0], args.worker[1], args.batch, args.mem_iters, args.device)))


def memory_in_subprocess(net_key: str, mode: str, args) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--worker", net_key, mode, "--batch", str(args.batch),
           "--mem-iters", str(args.mem_iters), "--device", args.device, "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", default="dit,unet")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=10, help="timed steps per mode")
    p.add_argument("--mem-iters", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also time the loss under torch.compile")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table for FM and MF")
    p.add_argument("--sweep", action="store_true", help="DiT token-count x batch sweep of the tangent paths")
    p.add_argument("--tokens", default="64,256,1024", help="--sweep: token counts (squares)")
    p.add_argument("--batches", default="4", help="--sweep: batch sizes")
    p.add_argument("--bf16", action="store_true", help="--sweep: steps under bfloat16 autocast (as training "
                   "on CUDA runs by default)")
    p.add_argument("--jvp-autocast", action="store_true", help="MeanFlow(jvp_precision='autocast'): with "
                   "--bf16 the MeanFlow network and tangent run in bf16 too (default: float32, as published)")
    p.add_argument("--modes", default=None, help="--sweep: subset of fm, mf-explicit, mf-tiled, mf-fused, "
                   "fm-compiled, mf-compiled, mf-naive")
    p.add_argument("--ratio", type=float, default=1.0, help="--sweep: fraction of each batch with r != t in "
                   "the MeanFlow steps, in [0, 1] (without --sweep: MeanFlow()'s default, 0.25)")
    p.add_argument("--flops-only", action="store_true", help="--sweep: print only the FLOP floor table "
                   "(MF / FM FLOPs per step) for --tokens, --batches and --ratio; no timing")
    p.add_argument("--methods", default=None, help="every method's step cost instead (comma-separated cases "
                   "or all; see benchmarks/step_cost_methods.py)")
    p.add_argument("--peak", action="store_true",
                   help="--methods: also peak memory, a fresh process per case")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    common.JVP_PRECISION = "autocast" if args.jvp_autocast else "float32"
    if args.methods:
        from benchmarks.step_cost_methods import run

        return run(args)
    if not 0.0 <= args.ratio <= 1.0:
        p.error(f"--ratio must be in [0, 1], got {args.ratio}")
    if args.worker:
        return run_worker(args)
    if args.sweep or args.flops_only:
        from benchmarks.step_cost_sweep import sweep, sweep_flops_only

        torch.set_num_threads(args.threads)
        return sweep_flops_only(args) if args.flops_only else sweep(args)
    torch.set_num_threads(args.threads)
    mib = 2.0**20
    print(f"torch {torch.__version__}, device {args.device}, batch {args.batch}, threads {args.threads}, "
          f"{args.iters} timed steps per mode (median), memory over {args.mem_iters} steps per fresh process")
    print("time: FM, MF, MF-naive steps interleaved in one process; ratios are to FM on the same net")
    print("peak: peak RSS (CPU, VmHWM) / max allocated (CUDA) during steps minus post-setup baseline "
          "(params, grads, Adam state); saved: tensors saved for backward by one loss (no params;\n"
          "for MF-naive approximate: forward-AD wrappers have no storage, counted per tensor)\n")
    hdr = (f"{'net':5s} {'params':>7s} {'mode':9s} {'step ms':>8s} {'x FM':>5s} {'peak MiB':>9s} "
           f"{'x FM':>5s} {'saved MiB':>9s} {'x FM':>5s}")
    print(hdr)
    print("-" * len(hdr))
    for key in args.nets.split(","):
        n_params = sum(p.numel() for p in build(key, "cpu").parameters()) / 1e6
        t = time_steps(key, args.batch, args.iters, args.device, compiled=False)
        mem = {m: memory_in_subprocess(key, m, args) for m in MODES}
        for m in MODES:
            peak, saved = mem[m]["peak_bytes"], mem[m]["saved_bytes"]
            print(f"{key:5s} {n_params:6.2f}M {m:9s} {t[m] * 1e3:8.1f} {t[m] / t['fm']:5.2f} "
                  f"{peak / mib:9.1f} {peak / mem['fm']['peak_bytes']:5.2f} "
                  f"{saved / mib:9.1f} {saved / mem['fm']['saved_bytes']:5.2f}")
        s = time_sampling(key, args.batch, max(args.iters, 10), args.device)
        print(f"{key:5s} sampling: bare forward {s['forward'] * 1e3:.1f} ms, MeanFlow 1-step "
              f"{s['mf-1step'] * 1e3:.1f} ms ({args.batch / s['mf-1step']:.0f} samples/s), "
              f"ratio {s['mf-1step'] / s['forward']:.3f}")
        if args.compile:
            try:
                tc = time_steps(key, args.batch, args.iters, args.device, compiled=True)
                print(f"{key:5s} compiled: FM {tc['fm'] * 1e3:.1f} ms, MF {tc['mf'] * 1e3:.1f} ms "
                      f"(x{tc['mf'] / tc['fm']:.2f}), MF-naive {tc['mf-naive'] * 1e3:.1f} ms "
                      f"(x{tc['mf-naive'] / tc['fm']:.2f}); compiled/eager MF {tc['mf'] / t['mf']:.2f}")
            except Exception as exc:  # report, do not hide: compile support is platform-dependent
                print(f"{key:5s} compiled: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        if args.profile:
            profile(key, args.batch, args.device)
        print()


if __name__ == "__main__":
    main()
