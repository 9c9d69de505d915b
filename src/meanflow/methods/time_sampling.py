"""Time draws for training and time grids for k-step sampling.

Two time distributions on (0, 1):

* ``"uniform"``: ``t ~ U(0, 1)``;
* ``"logit_normal"``: ``t = sigmoid(n)``, ``n ~ N(mean, std^2)`` (SD3 / MeanFlow).

Two published ways to turn two draws into a pair ``r <= t`` (``ratio`` = fraction of the batch with
``r != t``; the rest get ``r = t``, i.e. plain flow matching on those samples):

* ``"sort"`` (paper, official JAX code): draw ``a, b`` i.i.d. from the t-distribution, set
  ``t = max(a, b)``, ``r = min(a, b)``, then ``r = t`` outside the ratio mask.
* ``"min"`` (official CIFAR-10 PyTorch code, "v1"): ``t ~ D(t_mean, t_std)``,
  ``r ~ D(r_mean, r_std)`` independently, ``r = t`` outside the ratio mask, then ``r = min(t, r)``.

The ratio mask selects exactly ``round(ratio * B)`` samples at random positions, so the fraction is
exact for every batch rather than only in expectation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meanflow.errors import UserError

TIME_DISTS = ("uniform", "logit_normal")
TIME_PAIRINGS = ("sort", "min")


def check_time_dist(time_dist: str, std: float = 1.0) -> None:
    """Raise :class:`UserError` for an unknown distribution name or a non-positive std."""
    if time_dist not in TIME_DISTS:
        raise UserError(f"unknown time_dist {time_dist!r}; choose from {', '.join(TIME_DISTS)}")
    if time_dist == "logit_normal" and not std > 0:
        raise UserError(f"logit-normal std must be > 0, got {std}")


def sample_time(
    n: int,
    time_dist: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``n`` times in (0, 1).

    Args:
        n: Number of draws.
        time_dist: ``"uniform"`` or ``"logit_normal"`` (``sigmoid(N(mean, std^2))``).
        mean: Mean of the normal before the sigmoid (logit-normal only).
        std: Standard deviation of the normal before the sigmoid (logit-normal only).
        device: Device of the result.
        dtype: Dtype of the result.
        generator: Optional RNG.

    Returns:
        Tensor ``[n]``.
    """
    check_time_dist(time_dist, std)
    if time_dist == "uniform":
        return torch.rand(n, device=device, dtype=dtype, generator=generator)
    normal = torch.randn(n, device=device, dtype=dtype, generator=generator)
    return torch.sigmoid(normal * std + mean)


def ratio_mask(
    n: int, ratio: float, *, device=None, generator: torch.Generator | None = None
) -> Tensor:
    """Boolean mask ``[n]`` with exactly ``round(ratio * n)`` True entries at random positions."""
    k = int(round(ratio * n))
    perm = torch.randperm(n, device=device, generator=generator)
    return perm < k


def sample_t_r(
    n: int,
    *,
    ratio: float = 0.25,
    time_dist: str = "logit_normal",
    t_mean: float = -0.4,
    t_std: float = 1.0,
    r_mean: float = -0.4,
    r_std: float = 1.0,
    pairing: str = "sort",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw pairs ``r <= t`` for MeanFlow training (see the module docstring for the two pairings).

    Args:
        n: Batch size.
        ratio: Fraction of the batch with ``r != t``, in [0, 1].
        time_dist: ``"uniform"`` or ``"logit_normal"``.
        t_mean, t_std: Logit-normal parameters of the t draw (of both draws for ``"sort"``).
        r_mean, r_std: Logit-normal parameters of the r draw (``"min"`` only).
        pairing: ``"sort"`` or ``"min"``.
        device, dtype, generator: As for :func:`sample_time`.

    Returns:
        ``(t, r)``, each ``[n]``, with ``r <= t`` elementwise.
    """
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"ratio must be in [0, 1], got {ratio}")
    if pairing not in TIME_PAIRINGS:
        raise UserError(f"unknown time_pairing {pairing!r}; choose from {', '.join(TIME_PAIRINGS)}")
    kw = dict(device=device, dtype=dtype, generator=generator)
    if pairing == "sort":
        a = sample_time(n, time_dist, t_mean, t_std, **kw)
        b = sample_time(n, time_dist, t_mean, t_std, **kw)
        t, r = torch.maximum(a, b), torch.minimum(a, b)
        mask = ratio_mask(n, ratio, device=device, generator=generator)
        r = torch.where(mask, r, t)
    else:
        t = sample_time(n, time_dist, t_mean, t_std, **kw)
        r = sample_time(n, time_dist, r_mean, r_std, **kw)
        mask = ratio_mask(n, ratio, device=device, generator=generator)
        r = torch.minimum(t, torch.where(mask, r, t))
    return t, r


def uniform_schedule(steps: int, *, device: torch.device | str | None = None) -> Tensor:
    """Evenly spaced sampling grid ``1 = t_0 > t_1 > ... > t_k = 0``, float64 ``[steps + 1]``."""
    if int(steps) != steps or steps < 1:
        raise UserError(f"steps must be an integer >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64, device=device)
