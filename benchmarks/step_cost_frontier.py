"""Step cost of the MeanFlow family's frontier methods next to flow matching, on the same networks.

For the small DiT and U-Net of ``benchmarks/step_cost.py`` at a fixed batch: the median time of one
training step (loss forward + backward + Adam) of flow matching (FM), MeanFlow (25% r != t), MeanFlow
with Kim et al.'s interval weight, and α-Flow at three points of its curriculum (α = 1: trajectory flow
matching; α = 0.5: one extra no-grad forward of the r != t rows for the discrete target; α = 0: the JVP
target through the tangent mode on the r != t rows, half the batch), timed interleaved in one process,
as ratios to FM; beside each, the **FLOP floor**: FLOPs of the method's loss forward + backward over
FM's (``torch.utils.flop_counter``, attention under the math SDPA backend and the explicit attention
tangent, as in step_cost.py). Every JVP goes through the networks' tangent mode (partial tangents).

Usage::

    python -m benchmarks.step_cost_frontier                       # CPU: batch 16, 1 thread, 10 steps
    python -m benchmarks.step_cost_frontier --device cuda --batch 64 --iters 30
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.step_cost import NETS, build, interleaved_medians
from meanflow.methods import AlphaFlow, FlowMatching, MeanFlow
from meanflow.methods.base import Progress
from meanflow.networks import attention_tangent

PROGRESS = Progress(500, 1000)


def losses() -> dict:
    """Mode -> ``(net, x) -> LossOutput``."""
    def alpha(a: float):
        method = AlphaFlow(alpha_schedule="constant", alpha_start=a)
        return lambda net, x: method.loss(net, x, progress=PROGRESS)

    kim = MeanFlow(interval_weight="kim")
    return {
        "fm": FlowMatching().loss,
        "mf": MeanFlow().loss,
        "mf-kim": lambda net, x: kim.loss(net, x, progress=PROGRESS),
        "af(a=1)": alpha(1.0),
        "af(a=.5)": alpha(0.5),
        "af(a=0)": alpha(0.0),
    }


def flops(loss, net, x) -> int:
    """FLOPs of one loss forward + backward (seeded draws)."""
    torch.manual_seed(0)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), attention_tangent.use_impl("explicit"), counter:
        loss(net, x).loss.backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def step_fn(loss, net, x):
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step():
        out = loss(net, x)
        opt.zero_grad(set_to_none=False)
        out.loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", default="dit,unet")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, batch {args.batch}, threads {args.threads}, "
          f"{args.iters} interleaved steps per mode (median); floor = method FLOPs / FM FLOPs")
    print(f"{'net':5s} {'mode':9s} {'step ms':>8s} {'x FM':>6s} {'floor':>6s} {'x FM - floor':>12s}")
    for key in args.nets.split(","):
        base = build(key, args.device)
        x = torch.randn(args.batch, *NETS[key]["shape"], device=args.device)
        fns = losses()
        fl = {m: flops(f, copy.deepcopy(base), x) for m, f in fns.items()}
        steps = {m: step_fn(f, copy.deepcopy(base), x) for m, f in fns.items()}
        for s in steps.values():
            s()
        t = interleaved_medians(steps, args.iters, args.device)
        for m in fns:
            ratio, floor = t[m] / t["fm"], fl[m] / fl["fm"]
            print(f"{key:5s} {m:9s} {t[m] * 1e3:8.1f} {ratio:6.2f} {floor:6.2f} {ratio - floor:+12.2f}")


if __name__ == "__main__":
    main()
