"""Learning-rate schedule and per-step seeds."""

from __future__ import annotations

import math

import numpy as np


def lr_at(step: int, base_lr: float, warmup: int, decay_steps: int | None = None) -> float:
    """Linear warmup from base_lr / warmup to base_lr over `warmup` steps, then constant (the paper's
    schedules are constant after warmup), or with `decay_steps` the inverse square-root decay
    ``base_lr * sqrt(decay_steps / step)`` for ``step > decay_steps`` (EDM2, FastGen's sCD)."""
    lr = base_lr
    if decay_steps is not None and step > decay_steps:
        lr = base_lr * math.sqrt(decay_steps / step)
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    return lr


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of all random draws of one rank at one step.

    Reseeding every step from (seed, rank, step) makes the random stream a pure function of the step,
    so a resumed run draws exactly what an uninterrupted one would, with no RNG state to carry.
    """
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)
