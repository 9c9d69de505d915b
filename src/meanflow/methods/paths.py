"""Probability paths: how data ``x`` (t = 0) is carried to noise (t = 1).

Every path here is Gaussian given the data point, ``p(z_t | x) = N(alpha(t) x, sigma(t)^2 I)``, and is
written in the project's time direction (t = 0 data, t = 1 noise; the Score SDE paper uses the same).

* :class:`LinearPath`: ``alpha = 1 - t``, ``sigma = t``, conditional velocity ``e - x``; what flow
  matching and MeanFlow train on (``base.interpolate`` is the same formula).
* :class:`VPPath`, :class:`SubVPPath`, :class:`VEPath`: the three SDEs of Song et al. (2021), each
  a linear forward SDE ``dz = f(t) z dt + g(t) dw`` whose marginals have the closed forms below. For
  such an SDE the coefficients obey ``alpha' = f alpha`` and ``(sigma^2)' = 2 f sigma^2 + g^2``
  (tested), which is what makes the closed forms the SDE's own marginals.

An SDE path also gives the prior at t = 1 (``N(0, prior_std^2 I)``), its log-density, and
:meth:`SDEPath.discretize`, the one-step update ``z_{i+1} = z_i + f_i + G_i n`` that the
reverse-diffusion predictor inverts (DDPM's betas for VP, SMLD's noise levels for VE, Euler-Maruyama
otherwise, as in the Score SDE reference code).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from meanflow.errors import UserError
from meanflow.methods.base import expand_like, interpolate


class LinearPath:
    """``z_t = (1 - t) x + t e`` with conditional velocity ``dz_t/dt = e - x``."""

    prior_std = 1.0

    def alpha(self, t: Tensor) -> Tensor:
        """``1 - t``, same shape as ``t``."""
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        """``t``, same shape as ``t``."""
        return t

    def sample(self, x: Tensor, e: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_t, e - x)`` for data ``x`` ``[B, *S]``, noise ``e`` ``[B, *S]`` and times ``t`` ``[B]``."""
        return interpolate(x, e, t)


def _discrete_index(t: Tensor, n: int) -> Tensor:
    """Index ``floor(t (n - 1))`` in ``[0, n - 1]`` of the reference's n-level tables (long, like ``t``).

    A tolerance of 1e-4 keeps grid points such as ``t = i / (n - 1)`` from landing one level low when
    ``t (n - 1)`` rounds to just below an integer.
    """
    return torch.floor(t.double() * (n - 1) + 1e-4).long().clamp(0, n - 1)


class SDEPath(abc.ABC):
    """A linear forward SDE ``dz = f(t) z dt + g(t) dw`` on t in [0, 1] with Gaussian marginals.

    Times ``t`` are tensors of any shape (``[B]`` or 0-dim); coefficient methods return that shape.
    """

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation P of the prior ``N(0, P^2 I)`` that sampling starts from at t = 1."""

    @abc.abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Mean coefficient: ``E[z_t | x] = alpha(t) x``."""

    @abc.abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Standard deviation of ``z_t`` given ``x``."""

    @abc.abstractmethod
    def drift_coef(self, t: Tensor) -> Tensor:
        """``f(t)`` of the drift ``f(z, t) = f(t) z``."""

    @abc.abstractmethod
    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``g(t)``."""

    def drift(self, z: Tensor, t: Tensor) -> Tensor:
        """Forward drift ``f(t) z`` for ``z`` ``[B, *S]`` and ``t`` ``[B]`` or 0-dim; ``[B, *S]``."""
        return _bcast(self.drift_coef(t), z) * z

    def marginal(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``alpha(t) x`` ``[B, *S]`` and std ``sigma(t)`` (shape of ``t``) of ``p(z_t | x)``."""
        return _bcast(self.alpha(t), x) * x, self.sigma(t)

    def perturb(self, x: Tensor, e: Tensor, t: Tensor) -> Tensor:
        """``z_t = alpha(t) x + sigma(t) e`` for ``x, e`` ``[B, *S]`` and ``t`` ``[B]``."""
        return _bcast(self.alpha(t), x) * x + _bcast(self.sigma(t), x) * e

    def prior_logp(self, z: Tensor) -> Tensor:
        """``log N(z; 0, P^2 I) = -D/2 log(2 pi P^2) - ||z||^2 / (2 P^2)`` per sample: ``[B, *S] -> [B]``."""
        d = z[0].numel()
        p2 = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * p2) - z.flatten(1).square().sum(1) / (2 * p2)

    def discretize(self, z: Tensor, t: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """One step of an n-step forward chain, ``z_{i+1} = z_i + f_i + G_i n_i``.

        The default is Euler-Maruyama with ``dt = 1 / n``: ``f_i = f(t) z / n``,
        ``G_i = g(t) / sqrt(n)``.

        Args:
            z: State ``[B, *S]``.
            t: Times ``[B]`` or 0-dim.
            n: Number of levels of the chain (the sampler's step count).

        Returns:
            ``(f_i [B, *S], G_i)`` with ``G_i`` shaped like ``t``.
        """
        return self.drift(z, t) / n, self.diffusion(t) / math.sqrt(n)

    def langevin_alpha(self, t: Tensor, n: int) -> Tensor:
        """Factor ``a`` of the Langevin corrector's step ``2 a (snr ||n|| / ||score||)^2`` (1 here)."""
        return torch.ones_like(t)


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    """A coefficient of shape ``[B]`` or ``[]`` made to broadcast against ``x`` ``[B, *S]``."""
    return c if c.ndim == 0 else expand_like(c, x)


@dataclass(frozen=True)
class _LinearBeta:
    """The linear noise rate ``beta(t) = beta_min + t (beta_max - beta_min)`` shared by VP and sub-VP."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self) -> None:
        if not (0 <= self.beta_min <= self.beta_max and self.beta_max > 0):
            raise UserError(f"need 0 <= beta_min <= beta_max and beta_max > 0, got {self.beta_min}, "
                            f"{self.beta_max}")

    @property
    def prior_std(self) -> float:
        return 1.0

    def beta(self, t: Tensor) -> Tensor:
        """``beta(t)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        """``log alpha(t) = -int_0^t beta / 2 = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2``."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Tensor) -> Tensor:
        """``exp(log_alpha(t))``."""
        return torch.exp(self.log_alpha(t))

    def drift_coef(self, t: Tensor) -> Tensor:
        """``f(t) = -beta(t) / 2``."""
        return -0.5 * self.beta(t)

    def discrete_beta(self, t: Tensor, n: int) -> Tensor:
        """DDPM's ``beta_i``: entry ``floor(t (n - 1))`` of ``linspace(beta_min / n, beta_max / n, n)``.

        Raises:
            UserError: ``n <= beta_max``, where the largest ``beta_i`` reaches 1 and the chain breaks.
        """
        if n <= self.beta_max:
            raise UserError(f"the discrete VP chain needs more levels (steps) than beta_max = "
                            f"{self.beta_max}, got {n}")
        i = _discrete_index(t, n).to(t.dtype)
        return (self.beta_min + i / max(n - 1, 1) * (self.beta_max - self.beta_min)) / n

    def langevin_alpha(self, t: Tensor, n: int) -> Tensor:
        """``1 - beta_i`` (the reference's ``alphas[timestep]``)."""
        return 1 - self.discrete_beta(t, n)


@dataclass(frozen=True)
class VPPath(_LinearBeta, SDEPath):
    """Variance preserving SDE ``dz = -beta(t)/2 z dt + sqrt(beta(t)) dw`` (DDPM in continuous time).

    ``alpha(t) = exp(-t^2 (beta_max - beta_min)/4 - t beta_min/2)``, ``sigma(t)^2 = 1 - alpha(t)^2``;
    prior ``N(0, I)``.
    """

    def sigma(self, t: Tensor) -> Tensor:
        """``sqrt(1 - alpha^2)`` (computed with expm1: accurate for small t)."""
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def diffusion(self, t: Tensor) -> Tensor:
        """``g(t) = sqrt(beta(t))``."""
        return torch.sqrt(self.beta(t))

    def discretize(self, z: Tensor, t: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """DDPM's chain ``z_{i+1} = sqrt(1 - beta_i) z_i + sqrt(beta_i) n_i``:
        ``f_i = (sqrt(1 - beta_i) - 1) z``, ``G_i = sqrt(beta_i)``, ``beta_i`` from :meth:`discrete_beta`."""
        b = self.discrete_beta(t, n)
        return (_bcast(torch.sqrt(1 - b), z) - 1) * z, torch.sqrt(b)


@dataclass(frozen=True)
class SubVPPath(_LinearBeta, SDEPath):
    """Sub-VP SDE ``dz = -beta(t)/2 z dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw``.

    Same mean as VP; ``sigma(t) = 1 - alpha(t)^2`` (the variance is the square of VP's, so it stays
    below VP's); prior ``N(0, I)``. Its reverse-diffusion discretisation is Euler-Maruyama.
    """

    def sigma(self, t: Tensor) -> Tensor:
        """``1 - alpha(t)^2``."""
        return -torch.expm1(2 * self.log_alpha(t))

    def diffusion(self, t: Tensor) -> Tensor:
        """``g(t) = sqrt(beta(t) (1 - alpha(t)^4))``."""
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_alpha(t)))


@dataclass(frozen=True)
class VEPath(SDEPath):
    """Variance exploding SDE ``dz = sqrt(d sigma^2/dt) dw`` with geometric noise levels (SMLD / NCSN).

    ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``,
    ``g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min))``; prior ``N(0, sigma_max^2 I)``.
    As in the reference, the data at t = 0 count as already perturbed with ``sigma_min``: the SDE
    started from ``N(x, sigma_min^2 I)`` has exactly these marginals.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise UserError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")

    @property
    def prior_std(self) -> float:
        return float(self.sigma_max)

    def alpha(self, t: Tensor) -> Tensor:
        """``1``."""
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        """``sigma_min (sigma_max / sigma_min)^t``."""
        return self.sigma_min * torch.exp(t * math.log(self.sigma_max / self.sigma_min))

    def drift_coef(self, t: Tensor) -> Tensor:
        """``0``."""
        return torch.zeros_like(t)

    def diffusion(self, t: Tensor) -> Tensor:
        """``sigma(t) sqrt(2 log(sigma_max / sigma_min))``."""
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def discrete_sigma(self, t: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """SMLD's level ``sigma_i`` (entry ``floor(t (n - 1))`` of n geometric levels from ``sigma_min`` to
        ``sigma_max``) and the level below it, ``sigma_{i-1}`` (0 below the first)."""
        i = _discrete_index(t, n)
        log_ratio = math.log(self.sigma_max / self.sigma_min)

        def level(j: Tensor) -> Tensor:
            return self.sigma_min * torch.exp(j.to(t.dtype) / max(n - 1, 1) * log_ratio)

        return level(i), torch.where(i > 0, level(i - 1), torch.zeros_like(t))

    def discretize(self, z: Tensor, t: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """SMLD's chain ``z_{i+1} = z_i + sqrt(sigma_{i+1}^2 - sigma_i^2) n_i``: ``f_i = 0``,
        ``G_i = sqrt(sigma_i^2 - sigma_{i-1}^2)`` with the levels of :meth:`discrete_sigma`."""
        s, s_prev = self.discrete_sigma(t, n)
        return torch.zeros_like(z), torch.sqrt(s**2 - s_prev**2)


SDE_PATHS = {"vp": VPPath, "subvp": SubVPPath, "ve": VEPath}
"""Path classes by the names ``ScoreSDE(sde=...)`` accepts."""
