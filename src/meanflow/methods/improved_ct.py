"""Improved consistency training, iCT (Song & Dhariwal 2023, arXiv 2310.14189).

The CT objective of :mod:`~meanflow.methods.consistency_training` with the paper's changes:

* no EMA teacher: the target is the online network itself under stop-gradient (mu = 0, Sec. 3.2),
  so the method needs no target network, only the training progress;
* pseudo-Huber metric ``d(a, b) = sqrt(||a - b||^2 + c^2) - c``, ``c = 0.00054 sqrt(d)`` with d the data
  dimension (Sec. 3.3; c = 0.03 on CIFAR-10, d = 3072);
* exponential curriculum (Sec. 3.4)

      N(k) = min(s0 2^floor(k / K'), s1) + 1,   K' = floor(K / (log2 floor(s1 / s0) + 1)),
      s0 = 10, s1 = 1280 (K = 400k on CIFAR-10: N doubles every 50k steps from 11 to 1281);

* discrete log-normal choice of the pair (Sec. 3.5): index i of the ascending grid with probability

      p(i) ~ erf((ln sigma_{i+1} - P_mean) / (sqrt(2) P_std)) - erf((ln sigma_i - P_mean) / (sqrt(2) P_std)),
      P_mean = -1.1, P_std = 2.0

  (the mass a log-normal N(P_mean, P_std^2) on ln sigma puts on [sigma_i, sigma_{i+1}));
* weight ``lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i)`` (Sec. 3.1);
* dropout matters and the student and teacher passes share the dropout RNG (Sec. 3.1): done here by
  replaying the RNG state (``share_dropout_rng``), as in CT.

    L = E_i[ lambda(sigma_i) d(f_theta(x + sigma_{i+1} z, sigma_{i+1}), sg(f_theta(x + sigma_i z, sigma_i))) ]

Sources: the constants above are those of the iCT paper as summarised in the project SPEC §2; iCT has
no official code, and the same numbers (0.00054, -1.1, 2.0, 10, 1280, the K' formula) appear in public
re-implementations. sigma_min, sigma_max, rho, sigma_data are unchanged from CM (0.002, 80, 7, 0.5).
The two-step default noise level 0.821 is the CIFAR-10 one used with iCT (see
:mod:`~meanflow.methods.consistency`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.methods.base import LossOutput, Progress, check_override, expand_like
from meanflow.methods.consistency import ConsistencyModel

INDEX_DISTS = ("lognormal", "uniform")
WEIGHTINGS = ("inverse_gap", "uniform")


def ict_num_scales(step: int, total: int, s0: int, s1: int) -> int:
    """iCT curriculum ``N(k) = min(s0 2^floor(k/K'), s1) + 1``, ``K' = floor(K / (log2 floor(s1/s0) + 1))``
    (K' at least 1)."""
    k_prime = max(math.floor(max(total, 1) / (math.log2(math.floor(s1 / s0)) + 1)), 1)
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def lognormal_index_probs(sigmas: Tensor, p_mean: float, p_std: float) -> Tensor:
    """Probabilities ``[N - 1]`` (float64, summing to 1) of the pairs ``(sigma_i, sigma_{i+1})`` of an
    ascending grid ``[N]``: ``Phi(ln sigma_{i+1}) - Phi(ln sigma_i)`` normalised, with
    ``Phi(u) = erf((u - P_mean) / (sqrt(2) P_std))``."""
    cdf = torch.erf((sigmas.double().log() - p_mean) / (math.sqrt(2.0) * p_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


@dataclass
class ImprovedConsistencyTraining(ConsistencyModel):
    """iCT: CT with a stop-gradient teacher, pseudo-Huber metric and the paper's schedules.

    Defaults are the paper's (CIFAR-10: K = 400k). Shared fields are documented on
    :class:`~meanflow.methods.consistency.ConsistencyModel`; ``metric`` defaults to ``"pseudo_huber"``.

    Attributes:
        s0: Initial number of levels minus one (N(0) = s0 + 1).
        s1: Final number of levels minus one.
        p_mean: Mean of ln(sigma) of the discrete log-normal pair distribution.
        p_std: Standard deviation of ln(sigma) of that distribution.
        index_dist: ``"lognormal"`` (paper) or ``"uniform"`` (CT's uniform pair, an ablation).
        weighting: ``"inverse_gap"`` (paper, 1 / (sigma_{i+1} - sigma_i)) or ``"uniform"`` (CT's).
    """

    metric: str = "pseudo_huber"
    s0: int = 10
    s1: int = 1280
    p_mean: float = -1.1
    p_std: float = 2.0
    index_dist: str = "lognormal"
    weighting: str = "inverse_gap"

    needs: ClassVar[frozenset[str]] = frozenset({"progress"})
    default_steps: ClassVar[int] = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.s0) != self.s0 or int(self.s1) != self.s1 or not 1 <= self.s0 <= self.s1:
            raise UserError(f"need integers 1 <= s0 <= s1, got s0={self.s0}, s1={self.s1}")
        if not self.p_std > 0:
            raise UserError(f"p_std must be > 0, got {self.p_std}")
        if self.index_dist not in INDEX_DISTS:
            raise UserError(f"unknown index_dist {self.index_dist!r}; choose from {', '.join(INDEX_DISTS)}")
        if self.weighting not in WEIGHTINGS:
            raise UserError(f"unknown weighting {self.weighting!r}; choose from {', '.join(WEIGHTINGS)}")

    def num_scales(self, progress: Progress) -> int:
        """N(k) at ``progress``."""
        return ict_num_scales(progress.step, progress.total, int(self.s0), int(self.s1))

    def index_probs(self, n_scales: int, device=None) -> Tensor:
        """Probabilities ``[N - 1]`` of the pairs (i, i + 1) of the N-level grid."""
        if self.index_dist == "uniform":
            return torch.full((n_scales - 1,), 1.0 / (n_scales - 1), dtype=torch.float64, device=device)
        return lognormal_index_probs(self.sigmas(n_scales, device=device), self.p_mean, self.p_std)

    def weight(self, hi: Tensor, lo: Tensor) -> Tensor:
        """lambda per sample: ``1 / (hi - lo)`` (``"inverse_gap"``) or ones."""
        if self.weighting == "uniform":
            return torch.ones_like(hi)
        return 1.0 / (hi - lo)

    def loss(
        self,
        net: nn.Module,
        x: Tensor,
        y: Tensor | None = None,
        *,
        noise: Tensor | None = None,
        t: Tensor | None = None,
        r: Tensor | None = None,
        net_kwargs: dict | None = None,
        progress: Progress | None = None,
    ) -> LossOutput:
        """``mean_b lambda d(f_theta(x + sigma_{i+1} z, sigma_{i+1}), sg(f_theta(x + sigma_i z, sigma_i)))``.

        Args:
            net: Network ``net(z, t, h, y)`` (possibly DDP-wrapped); also the stop-gradient teacher.
            x: Data ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            noise: Overrides the draw ``z``, ``[B, *S]``.
            t: With ``r``, overrides the pair of levels: ``sigma(t)`` for the online pass.
            r: ``sigma(r) < sigma(t)`` for the stop-gradient pass.
            net_kwargs: Extra keyword inputs passed unchanged to both network calls.
            progress: Training progress (the curriculum N(k)); required.

        Returns:
            :class:`LossOutput` with metrics ``loss``, ``N`` (levels) and ``distance`` (unweighted mean d).
        """
        if progress is None:
            raise UserError("improved consistency training needs the training progress "
                            "(progress=Progress(step, total))")
        b = x.shape[0]
        check_override("noise", noise, tuple(x.shape))
        n_scales = self.num_scales(progress)
        if t is not None or r is not None:
            hi, lo = self.override_sigmas(b, t, r, x.device)
        else:
            grid = self.sigmas(n_scales, device=x.device)
            i = torch.multinomial(self.index_probs(n_scales, x.device), b, replacement=True)
            hi, lo = grid[i + 1], grid[i]
        z = torch.randn_like(x) if noise is None else noise.to(x.device, x.dtype)
        hi_x, lo_x = hi.to(x.dtype), lo.to(x.dtype)
        # The teacher is the online network itself under stop-gradient (no EMA).
        x_hi, x_lo = x + expand_like(hi_x, x) * z, x + expand_like(lo_x, x) * z
        online, teacher = self.pair(net, net, x_hi, hi_x, x_lo, lo_x, y, net_kwargs)
        dist = self.distance(online, teacher)
        loss = (self.weight(hi, lo).to(dist.dtype) * dist).mean()
        metrics = {
            "loss": loss.detach(),
            "N": torch.tensor(float(n_scales), device=x.device),
            "distance": dist.detach().mean(),
        }
        return LossOutput(loss=loss, metrics=metrics)
