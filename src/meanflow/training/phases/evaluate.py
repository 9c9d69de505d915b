"""The evaluation phase of a 2-D or 8x8-digits run: measured once at the end.

2-D: ``sliced_wasserstein`` and ``energy_distance`` between 4096 samples (`logging.sample_steps` steps,
default the method's `grid_steps`; seed ``training.seed + 1``) and 4096 test points of the same
toy distribution (seed ``training.seed``).
Digits (`data.name=digits`, 8x8): the legible share of 1,000 samples (class-balanced when the run is
conditional; same steps and seed), i.e. the share a digit classifier trained on the real digits labels
with confidence >= 0.9, beside the same share for the held-out real digits
(`meanflow.evaluation.digit_legibility`). Rank 0 only, under a forked RNG.

Touches: `metrics.json` and one ``eval/`` record of the log. Reads `run.sample_net` (holding what the
final sample grid loaded into it).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch

from meanflow.training.run_log import write_atomic

if TYPE_CHECKING:
    from meanflow.training.run_state import RunState


def toy_report(run: RunState) -> None:
    """Write `metrics.json` and the ``eval/`` log record of a finished 2-D run (rank 0)."""
    if not run.info.is_main:
        return
    from meanflow.data import build_dataset
    from meanflow.evaluation.toy_metrics import energy_distance, sliced_wasserstein
    from meanflow.sampling import generate

    cfg, parts, net = run.cfg, run.parts, run.sample_net
    n, steps = 4096, cfg.logging.sample_steps or parts.method.grid_steps
    ref = build_dataset(cfg.data.name, split="test", n=n, seed=cfg.training.seed).x
    dev = next(net.parameters()).device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        x = generate(parts.method, net, 0, n, steps=steps, seed=cfg.training.seed + 1, batch_size=n,
                     device=dev, shape=parts.shape, num_classes=0,
                     progress=None if cfg.logging.progress and run.info.is_main else False)
    metrics = {"sliced_wasserstein": float(sliced_wasserstein(x, ref)), "energy_distance":
               float(energy_distance(x, ref))}
    record = {"step": run.step, "steps": steps, **metrics}
    write_atomic(run.run_dir / "metrics.json", json.dumps(record, indent=2) + "\n")
    run.logger.write({"step": run.step, **{f"eval/{k}": v for k, v in metrics.items()}})
    run.echo(f"{steps}-step samples vs test points: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def is_digits_run(run: RunState) -> bool:
    return run.cfg.data.name == "digits" and tuple(run.parts.shape) == (1, 8, 8)


def digits_report(run: RunState, n: int = 1000) -> None:
    """Write `metrics.json` and the ``eval/`` log record of a finished 8x8 digits run (rank 0)."""
    if not run.info.is_main:
        return
    from meanflow.evaluation.digit_legibility import legibility_report
    from meanflow.sampling import generate

    cfg, parts, net = run.cfg, run.parts, run.sample_net
    steps = cfg.logging.sample_steps or parts.method.grid_steps
    dev = next(net.parameters()).device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        x = generate(parts.method, net, 0, n, steps=steps, seed=cfg.training.seed + 1, batch_size=500,
                     device=dev, shape=parts.shape, num_classes=parts.classes,
                     progress=None if cfg.logging.progress else False)
        report = legibility_report(x)
    metrics = {k: report[k] for k in ("legible", "legible_real", "ratio")}
    record = {"step": run.step, "steps": steps, "samples": n, **report}
    write_atomic(run.run_dir / "metrics.json", json.dumps(record, indent=2) + "\n")
    run.logger.write({"step": run.step, **{f"eval/{k}": v for k, v in metrics.items()}})
    run.echo(f"legible digits: {metrics['legible']:.0%} of {n} {steps}-step samples (classifier confidence "
             f">= 0.9; real held-out digits: {metrics['legible_real']:.0%}, ratio {metrics['ratio']:.2f})")
