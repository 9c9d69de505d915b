"""Learning-rate schedule and per-step seeds."""

from __future__ import annotations

import numpy as np


def lr_at(step: int, base_lr: float, warmup: int) -> float:
    """Linear warmup from base_lr / warmup to base_lr over `warmup` steps, then constant (the paper's
    schedules are constant after warmup)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of all random draws of one rank at one step.

    Reseeding every step from (seed, rank, step) makes the random stream a pure function of the step,
    so a resumed run draws exactly what an uninterrupted one would, with no RNG state to carry.
    """
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)
