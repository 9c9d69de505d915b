"""The interval curriculum of Kim et al. (arXiv 2511.19065), an option of MeanFlow.

Each ``r != t`` row's adaptive-weighted loss is multiplied by

    β(Δt, s) = 1 - s + λ s (1 - Δt),    Δt = t - r,    s = 1 - (step / total)^k,

with ``λ = 1 / E[1 - Δt | r != t]`` under the method's own (t, r) draw. At the start (s = 1) β is
``λ (1 - Δt)``: short intervals weigh more, and β averages 1 over the draws; at the end (s = 0) β = 1,
the plain MeanFlow loss. Rows with ``r = t`` keep weight 1. β multiplies the loss *after* the adaptive
normalisation (inside it, the normalisation would cancel it). k = 1 (linear) is the paper's best.

No official code was available to check against (FRONTIER.md §2): the formula is the paper's as
summarised there; its second part (a faster start for the instantaneous velocity through a new time
distribution or a boundary weight) is not implemented because its form is not confirmed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meanflow.errors import UserError
from meanflow.methods.time_sampling import sample_t_r

INTERVAL_WEIGHTS = ("none", "kim")
_LAMBDA: dict[tuple, float] = {}


def check_interval_weight(name: str, power: float) -> None:
    """One-line UserError for an unknown weight name or a power <= 0."""
    if name not in INTERVAL_WEIGHTS:
        raise UserError(f"unknown interval_weight {name!r}; choose from {', '.join(INTERVAL_WEIGHTS)}")
    if not power > 0:
        raise UserError(f"interval_power must be > 0, got {power}")


def interval_lambda(**draw) -> float:
    """``1 / E[1 - (t - r) | r != t]`` for the (t, r) draw ``sample_t_r(**draw)`` (``time_dist``,
    ``t_mean``, ``t_std``, ``r_mean``, ``r_std``, ``pairing``), from 2^20 float64 draws of a
    fixed-seed generator (cached per draw settings)."""
    key = tuple(sorted(draw.items()))
    if key not in _LAMBDA:
        g = torch.Generator().manual_seed(0)
        t, r = sample_t_r(1 << 20, ratio=1.0, generator=g, dtype=torch.float64, **draw)
        _LAMBDA[key] = float(1.0 / (1.0 - (t - r)[r != t]).mean())
    return _LAMBDA[key]


def kim_beta(t: Tensor, r: Tensor, fraction: float, power: float, lam: float) -> Tensor:
    """β ``[B]`` for times ``t, r [B]`` at training progress ``fraction = step / total`` (1 where r = t)."""
    s = 1.0 - fraction ** power
    beta = 1.0 - s + lam * s * (1.0 - (t - r))
    return torch.where(r != t, beta, torch.ones_like(beta))
