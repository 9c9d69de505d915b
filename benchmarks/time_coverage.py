"""How often a MeanFlow time sampler trains the intervals that few-step sampling uses.

One-step sampling evaluates u(z, r=0, t=1): the whole interval. Training only sees the (r, t) pairs
its sampler draws, so a sampler that almost never draws long intervals leaves the 1-step map
undertrained even when short intervals (and so 2-step or many-step sampling) are learnt well. For
each preset given (with optional ``--set`` overrides, as for ``meanflow train``), this draws pairs
with the preset's own method settings and prints, by Monte Carlo over ``--draws`` pairs:

* ``r != t``: the fraction of pairs with a non-zero interval (the ``ratio`` setting);
* ``P(t - r > L)``: the fraction of pairs whose interval is longer than L, for a few L;
* ``P(r<a, t>1-a)``: the fraction of pairs within ``a`` of the 1-step interval (0, 1);
* ``per run``: the expected number of such pairs seen in the preset's whole training
  (steps x batch x fraction).

Usage::

    python benchmarks/time_coverage.py mnist cifar10 cifar10-v1 imagenet-xl2
    python benchmarks/time_coverage.py mnist --set method.ratio=0.75
"""

from __future__ import annotations

import argparse

import torch

from meanflow.methods.time_sampling import sample_t_r
from meanflow.training.presets import resolve_config

LENGTHS = (0.5, 0.8, 0.95)
# Training-set sizes of the epoch-based paper presets (CIFAR-10 train; ImageNet-1k train as latents).
DATASET_SIZES = {"cifar10": 50_000, "latents": 1_281_167}


def coverage(method, draws: int, near: float, seed: int = 0) -> dict[str, float]:
    """Fractions of `draws` sampled pairs (r <= t) by interval length, for a MeanFlow `method`."""
    g = torch.Generator().manual_seed(seed)
    t, r = sample_t_r(draws, ratio=method.ratio, time_dist=method.time_dist, t_mean=method.t_mean,
                      t_std=method.t_std, r_mean=method.r_mean, r_std=method.r_std,
                      pairing=method.time_pairing, dtype=torch.float64, generator=g)
    d = t - r
    out = {"r != t": float((d > 0).double().mean())}
    for length in LENGTHS:
        out[f"P(t-r>{length})"] = float((d > length).double().mean())
    out[f"P(r<{near},t>{1 - near:g})"] = float(((r < near) & (t > 1 - near)).double().mean())
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("presets", nargs="+", help="preset names (see `meanflow presets`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every preset (repeatable)")
    p.add_argument("--draws", type=int, default=4_000_000, help="Monte Carlo pairs per preset")
    p.add_argument("--near", type=float, default=0.05, help="distance to (0, 1) counted as 1-step")
    p.add_argument("--dataset-size", type=int, default=None,
                   help="training-set size for epoch-based presets (default: CIFAR-10 / ImageNet sizes)")
    args = p.parse_args(argv)
    rows = []
    for name in args.presets:
        cfg = resolve_config(name, overrides=args.set)
        if cfg.method.name != "meanflow":
            raise SystemExit(f"preset {name!r} trains {cfg.method.name}, not meanflow")
        cov = coverage(cfg.method.build(cfg.expected_classes()), args.draws, args.near)
        size = args.dataset_size or DATASET_SIZES.get(cfg.data.name)
        steps = cfg.training.steps if cfg.training.epochs is None or size is None else \
            cfg.training.total_steps(size)
        pairs = float("nan") if steps is None else steps * cfg.training.batch_size
        near_key = f"P(r<{args.near},t>{1 - args.near:g})"
        rows.append((name, cov, pairs * cov[f"P(t-r>{LENGTHS[1]})"], pairs * cov[near_key], cfg))
    keys = list(rows[0][1])
    print(f"{args.draws:,} pairs per preset; overrides: {args.set or 'none'}")
    print("| preset | sampler | " + " | ".join(keys) + f" | pairs with t-r>{LENGTHS[1]} per run "
          "| near (0,1) per run |")
    print("|---|---|" + "---:|" * (len(keys) + 2))
    for name, cov, long_pairs, near_pairs, cfg in rows:
        m = cfg.method.build(cfg.expected_classes())
        r_part = "" if m.time_pairing == "sort" else f", r {m.r_mean}/{m.r_std}"
        sampler = f"{m.time_dist} t {m.t_mean}/{m.t_std}{r_part}, {m.time_pairing}"
        cells = " | ".join(f"{v:.3g}" for v in cov.values())
        per_run = " | ".join("-" if v != v else f"{v:,.0f}" for v in (long_pairs, near_pairs))
        print(f"| {name} | {sampler} | {cells} | {per_run} |")


if __name__ == "__main__":
    main()
