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
    python benchmarks/step_cost.py --sweep --tokens 64,256,1024 --batches 4 --iters 5
    python benchmarks/step_cost.py --sweep --device cuda --bf16 --jvp-autocast --batches 32
    python benchmarks/step_cost.py --sweep --tokens 256 --batches 8 --ratio 0.25 --modes fm,mf-tiled
    python benchmarks/step_cost.py --sweep --flops-only --tokens 64,256,1024 --batches 8 --ratio 0.25
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from meanflow.methods import FlowMatching, MeanFlow
from meanflow.networks import attention_tangent, build_network

NETS = {
    # DiT-S-like width, shallower, patch 2 on 32x32x4: 256 tokens (the paper's latent size).
    "dit": dict(
        name="dit", shape=(4, 32, 32),
        kwargs=dict(input_size=32, in_channels=4, patch_size=2, hidden_size=256, depth=4, num_heads=4,
                    num_classes=0),
    ),
    # DDPM++-like U-Net, narrow: 32 channels, 2 levels below 32x32, attention at 16x16.
    "unet": dict(
        name="unet", shape=(3, 32, 32),
        kwargs=dict(img_resolution=32, in_channels=3, model_channels=32, channel_mult=(1, 2, 2),
                    num_blocks=1, attn_resolutions=(16,), dropout=0.0, num_classes=0),
    ),
}
MODES = ("fm", "mf", "mf-naive")


class HideTangents(nn.Module):
    """Hides a network's tangent mode so MeanFlow falls back to torch.func.jvp."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, z, t, h, y=None):
        return self.inner(z, t, h, y)


def build(net_key: str, device: str) -> nn.Module:
    torch.manual_seed(0)
    spec = NETS[net_key]
    net = build_network(spec["name"], **spec["kwargs"]).to(device)
    with torch.no_grad():  # move off the zero-init (adaLN, output) so the work is realistic
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


def make_step(mode: str, net: nn.Module, x: torch.Tensor, compiled: bool = False,
              ratio: float | None = None):
    """One training step closure ``() -> None`` for a mode, with its own Adam optimizer.

    ``ratio``: the MeanFlow modes' fraction of the batch with ``r != t`` (None: ``MeanFlow()``'s default).
    """
    method = FlowMatching() if mode == "fm" else make_meanflow(ratio)
    target = HideTangents(net) if mode == "mf-naive" else net
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    for p in net.parameters():  # allocate grads and Adam state up front (part of the baseline)
        p.grad = torch.zeros_like(p)
    opt.step()
    loss_fn = method.loss
    if compiled:
        loss_fn = torch.compile(method.loss)

    def step():
        out = loss_fn(target, x)
        opt.zero_grad(set_to_none=False)
        out.loss.backward()
        opt.step()

    return step, method, target


JVP_PRECISION = "float32"
"""``MeanFlow(jvp_precision=...)`` of every MeanFlow step (``--jvp-autocast`` sets "autocast")."""


def make_meanflow(ratio: float | None = None) -> MeanFlow:
    """``MeanFlow(ratio=ratio)``, or ``MeanFlow()``'s default ratio for None, with `JVP_PRECISION`."""
    if ratio is None:
        return MeanFlow(jvp_precision=JVP_PRECISION)
    return MeanFlow(ratio=ratio, jvp_precision=JVP_PRECISION)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def saved_tensor_bytes(method, target, net, x) -> int:
    """Bytes of unique non-parameter storages saved for backward by one loss evaluation."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            base = t
            while torch._C._functorch.is_functorch_wrapped_tensor(base):  # torch.func.jvp wrappers
                base = torch._C._functorch.get_unwrapped(base)
            try:
                s = base.untyped_storage()
                key, nbytes = s.data_ptr(), s.nbytes()
            except RuntimeError:  # a storage-less wrapper (forward-AD dual): count the view itself
                key, nbytes = id(base), base.numel() * base.element_size()
            if key not in params:
                seen[key] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = method.loss(target, x)
    del out
    return sum(seen.values())


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def peak_bytes(step, iters: int, device: str) -> int:
    """Peak memory of ``iters`` calls of ``step`` above the level after one warm-up call (lazy
    initialisations, kernels and caches happen before the baseline)."""
    step()
    gc.collect()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(iters):
            step()
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    # Reset the kernel's high-water mark (VmHWM) to the current RSS, then read it back after the steps
    # (Linux >= 4.0). Freed tensors go back to the OS thanks to MALLOC_MMAP_THRESHOLD_.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    for _ in range(iters):
        step()
    return (_status_kib("VmHWM") - base) * 1024


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


def interleaved_medians(fns: dict, iters: int, device: str) -> dict[str, float]:
    """Median seconds of each callable in `fns`, run in turn (a, b, c, a, b, c, ...) `iters` times so
    that load from other processes hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


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
        tokens = int(args.worker[0].split("-")[1])
        print(json.dumps(sweep_memory(tokens, args.worker[1], args.batch, args.mem_iters, args.device,
                                      args.bf16, args.ratio)))
        return
    print(json.dumps(worker_memory(args.worker[0], args.worker[1], args.batch, args.mem_iters, args.device)))


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
            cmd = [sys.executable, __file__, "--worker", f"sweep-{n}", m, "--batch", str(b),
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
    p.add_argument("--modes", default=None, help=f"--sweep: subset of {','.join(SWEEP_MODES)}")
    p.add_argument("--ratio", type=float, default=1.0, help="--sweep: fraction of each batch with r != t in "
                   "the MeanFlow steps, in [0, 1] (without --sweep: MeanFlow()'s default, 0.25)")
    p.add_argument("--flops-only", action="store_true", help="--sweep: print only the FLOP floor table "
                   "(MF / FM FLOPs per step) for --tokens, --batches and --ratio; no timing")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    global JVP_PRECISION
    JVP_PRECISION = "autocast" if args.jvp_autocast else "float32"
    if not 0.0 <= args.ratio <= 1.0:
        p.error(f"--ratio must be in [0, 1], got {args.ratio}")
    if args.worker:
        return run_worker(args)
    if args.sweep or args.flops_only:
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
