"""What a bf16 JVP costs in sample quality: MeanFlow trained under bf16 autocast, JVP in float32 or not.

Trains the same MLP (3 x 128) on the 2-D checkerboard twice under ``torch.autocast(bfloat16)``, once
with ``MeanFlow(jvp_precision="float32")`` (published: the network runs in float32 inside the loss)
and once with ``jvp_precision="autocast"`` (the network and its tangent in bf16), then prints the
sliced Wasserstein-2 and energy distance of 2,000 one-step samples to 2,000 held-out points.

Usage::

    python benchmarks/jvp_precision.py                 # CPU, 1,500 steps (~2 min on one core)
    python benchmarks/jvp_precision.py --device cuda --steps 3000
"""

from __future__ import annotations

import argparse
import time

import torch

from meanflow.data import toy2d
from meanflow.evaluation.toy_metrics import energy_distance, sliced_wasserstein
from meanflow.methods import MeanFlow
from meanflow.networks import build_network


def train_and_score(precision: str, args, data: torch.Tensor, held: torch.Tensor) -> dict:
    torch.manual_seed(0)
    net = build_network("mlp", dim=2, hidden=128, depth=3).to(args.device)
    method = MeanFlow(ratio=0.5, time_dist="uniform", jvp_precision=precision)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(args.steps):
        x = data[torch.randint(0, len(data), (args.batch,), generator=g)].to(args.device)
        with torch.autocast(args.device, torch.bfloat16):
            loss = method.loss(net, x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2)).to(args.device)
    samples = method.sample(net, noise, steps=1).float().cpu()
    return {"seconds": time.perf_counter() - start, "sliced_w2": sliced_wasserstein(samples, held),
            "energy": energy_distance(samples, held)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = toy2d.sample("checkerboard", 50000, seed=0)
    held = toy2d.sample("checkerboard", 2000, seed=1)
    print(f"checkerboard, MLP 3 x 128, batch {args.batch}, {args.steps} steps under bf16 autocast "
          f"on {args.device}")
    for precision in ("float32", "autocast"):
        r = train_and_score(precision, args, data, held)
        print(f"jvp_precision={precision:8s}  1-step sliced W2 {r['sliced_w2']:.3f}  "
              f"energy {r['energy']:.4f}  ({r['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
