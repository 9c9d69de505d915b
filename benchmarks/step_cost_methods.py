"""Step cost of every method next to flow matching, on the same DiT and U-Net (``step_cost.py --methods``).

For the small DiT and U-Net of ``benchmarks/step_cost.py`` at a fixed batch, for each method (or a
setting of one), in one process:

* ``step ms`` / ``x FM``: the median time of one training step (the method's loss forward + backward +
  Adam) of every case, interleaved (fm, meanflow, ..., fm, meanflow, ...), as a ratio to flow matching;
* ``floor``: the FLOP floor, the FLOPs of the case's loss forward + backward over flow matching's
  (``torch.utils.flop_counter``: matrix products and convolutions; attention under the math SDPA backend
  and the explicit attention tangent, as ``step_cost.py``); ``x FM - floor`` is the overhead above the
  arithmetic (the goal for a JVP method: at most +0.05);
* ``saved`` / ``x FM``: bytes of the tensors autograd saves for backward in one loss (unique storages,
  parameters excluded): the activation memory of the step, allocator-independent;
* with ``--peak``: ``peak``, the peak memory of 3 steps in a fresh process above the post-setup baseline
  (CPU: VmHWM, as ``step_cost.py``; CUDA: max allocated).

Context each case gets: training progress at half of a 1,000-step run; a target network (a copy of the
net, for CT, CD, the shortcut model; its EMA update is not timed), a teacher (a frozen copy, for CD and
sCD), the pairs' noise (reflow, distillation). Networks get the options a method needs (the log-variance
head of DMF / sCT / sCD, DMF's decoupled depth 2 of 4 on the DiT); a case a network cannot run is
printed as ``n/a`` with the reason. A new registered method appears as its defaults.

Usage::

    python benchmarks/step_cost.py --methods all                  # CPU: batch 16, 1 thread, 10 steps
    python benchmarks/step_cost.py --methods fm,meanflow,sct,soflow --nets dit --iters 20
    python benchmarks/step_cost.py --methods all --device cuda --batch 64 --iters 30 --peak
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from meanflow.errors import UserError
from meanflow.methods import METHODS, build_method
from meanflow.methods.base import Progress
from meanflow.networks import attention_tangent, build_network

PROGRESS = Progress(500, 1000)

# Case -> (registry name, method options, network options). Settings of one method are separate cases
# where the step differs in kind (α-Flow: no extra pass at α = 1, a no-grad pass at 0 < α < 1, the JVP at
# α = 0). Registered methods not named here are added with their defaults.
CASES: dict[str, tuple[str, dict, dict]] = {
    "fm": ("flow_matching", {}, {}),
    "meanflow": ("meanflow", {}, {}),
    "meanflow-kim": ("meanflow", {"interval_weight": "kim"}, {}),
    "imf": ("imf", {}, {}),
    "alphaflow(a=1)": ("alphaflow", {"alpha_schedule": "constant", "alpha_start": 1.0}, {}),
    "alphaflow(a=.5)": ("alphaflow", {"alpha_schedule": "constant", "alpha_start": 0.5}, {}),
    "alphaflow(a=0)": ("alphaflow", {"alpha_schedule": "constant", "alpha_start": 0.0}, {}),
    "dmf": ("dmf", {}, {"decoupled_depth": 2, "log_variance": True}),
    "sct": ("sct", {}, {}),
    "scd": ("scd", {}, {}),
    "soflow": ("soflow", {}, {}),
    "splitmeanflow": ("splitmeanflow", {}, {}),
    "pmf": ("pmf", {"aux_head": False}, {}),
    "shortcut": ("shortcut", {}, {}),
    "ct": ("ct", {}, {}),
    "ict": ("ict", {}, {}),
    "cd": ("cd", {}, {}),
    "reflow": ("reflow", {}, {}),
    "distill": ("distill", {}, {}),
    "score_sde": ("score_sde", {}, {}),
}


def all_cases() -> list[str]:
    """Every case whose method is registered, then any registered method not covered by a case."""
    named = [c for c, (m, _, _) in CASES.items() if m in METHODS]
    covered = {CASES[c][0] for c in named}
    return named + [m for m in METHODS if m not in covered]


def spec(case: str) -> tuple[str, dict, dict]:
    if case in CASES:
        return CASES[case]
    if case in METHODS:
        return case, {}, {}
    raise SystemExit(f"unknown case {case!r}; choose from {', '.join(all_cases())}")


def build_case(case: str, net_key: str, nets: dict, device: str, batch: int):
    """``(loss_fn, net, x)`` of one case: ``loss_fn(net, x) -> LossOutput`` with the context bound, a
    fresh copy of the case's network (same seed as every other case), a fixed batch. Raises UserError or
    TypeError when the network cannot take the method's options."""
    name, kwargs, net_opts = spec(case)
    method = build_method(name, **kwargs)
    net_opts = {**net_opts, **dict(getattr(method, "network_options", {}) or {})}
    spec_net = nets[net_key]
    torch.manual_seed(0)
    net = build_network(spec_net["name"], **{**spec_net["kwargs"], **net_opts}).to(device)
    with torch.no_grad():  # off the zero-init (adaLN, output) so that the work is realistic
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(batch, *spec_net["shape"], device=device, generator=None)
    ctx: dict = {}
    if "progress" in method.needs:
        ctx["progress"] = PROGRESS
    if "target" in method.needs:
        ctx["target"] = copy.deepcopy(net).requires_grad_(False)
    if "teacher" in method.needs:
        ctx["teacher"] = copy.deepcopy(net).eval().requires_grad_(False)
    if getattr(method, "needs_pairs", False):
        ctx["noise"] = torch.randn_like(x)
    check = getattr(method, "check_network", None)
    if check is not None:
        check(net)

    def loss_fn(n, xb):
        return method.loss(n, xb, **ctx)

    return loss_fn, net, x


def flops(loss_fn, net, x) -> int:
    """FLOPs of one loss forward + backward (seeded draws)."""
    torch.manual_seed(0)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), attention_tangent.use_impl("explicit"), counter:
        loss_fn(net, x).loss.backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def step_fn(loss_fn, net, x):
    """One training step closure with its own Adam (grads and state allocated up front)."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()

    def step():
        out = loss_fn(net, x)
        opt.zero_grad(set_to_none=False)
        out.loss.backward()
        opt.step()

    return step


def worker(args) -> None:
    """In a fresh process: the peak memory of ``--mem-iters`` steps of one case (JSON on stdout)."""
    from benchmarks.step_cost_common import NETS, peak_bytes

    torch.set_num_threads(args.threads)
    net_key, case = args.worker
    loss_fn, net, x = build_case(case, net_key, NETS, args.device, args.batch)
    print(json.dumps({"peak_bytes": peak_bytes(step_fn(loss_fn, net, x), args.mem_iters, args.device)}))


def peak_in_subprocess(net_key: str, case: str, args) -> int | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, "-m", "benchmarks.step_cost_methods", "--worker", net_key, case, "--batch",
           str(args.batch), "--mem-iters", str(args.mem_iters), "--device", args.device, "--threads",
           str(args.threads)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        return None
    return int(json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"])


def run(args) -> None:
    """Print the table for ``args.methods`` (comma list or ``all``) on ``args.nets``."""
    from benchmarks.step_cost_common import NETS, interleaved_medians, saved_tensor_bytes

    torch.set_num_threads(args.threads)
    cases = all_cases() if args.methods == "all" else [c.strip() for c in args.methods.split(",")]
    if "fm" not in cases:
        cases = ["fm", *cases]
    for c in cases:
        spec(c)
    mib = 2.0**20
    print(f"torch {torch.__version__}, device {args.device}, batch {args.batch}, threads {args.threads}, "
          f"{args.iters} interleaved steps per case (median); floor = case FLOPs / FM FLOPs; saved = "
          "activation bytes saved for backward")
    hdr = (f"{'net':5s} {'case':16s} {'step ms':>8s} {'x FM':>6s} {'floor':>6s} {'x FM - floor':>12s} "
           f"{'saved MiB':>9s} {'x FM':>5s}" + (f" {'peak MiB':>9s} {'x FM':>5s}" if args.peak else ""))
    print(hdr)
    print("-" * len(hdr))
    for key in args.nets.split(","):
        built, skipped = {}, {}
        for c in cases:
            try:
                built[c] = build_case(c, key, NETS, args.device, args.batch)
            except (UserError, TypeError, ValueError) as exc:
                skipped[c] = str(exc).splitlines()[0][:90]
        fl = {}
        for c, b in list(built.items()):
            try:
                fl[c] = flops(*b)  # the first loss call: a method refusing this network says so here
            except (UserError, TypeError, ValueError) as exc:
                skipped[c] = str(exc).splitlines()[0][:90]
                del built[c]
        saved = {c: saved_tensor_bytes(SimpleNamespace(loss=b[0]), b[1], b[1], b[2])
                 for c, b in built.items()}
        steps = {c: step_fn(*b) for c, b in built.items()}
        for s in steps.values():
            s()
        t = interleaved_medians(steps, args.iters, args.device)
        peak = {c: peak_in_subprocess(key, c, args) for c in built} if args.peak else {}
        for c in cases:
            if c in skipped:
                print(f"{key:5s} {c:16s} n/a: {skipped[c]}")
                continue
            ratio, floor = t[c] / t["fm"], fl[c] / fl["fm"]
            line = (f"{key:5s} {c:16s} {t[c] * 1e3:8.1f} {ratio:6.2f} {floor:6.2f} {ratio - floor:+12.2f} "
                    f"{saved[c] / mib:9.2f} {saved[c] / saved['fm']:5.2f}")
            if args.peak:
                pk, base = peak.get(c), peak.get("fm")
                line += (f" {pk / mib:9.1f} {pk / base:5.2f}" if pk and base else f" {'-':>9s} {'-':>5s}")
            print(line, flush=True)
        print()


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="all", help="comma-separated cases, or all")
    p.add_argument("--nets", default="dit,unet")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--mem-iters", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--peak", action="store_true", help="also the peak memory, one fresh process per case")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    run(args)


if __name__ == "__main__":
    main()
