"""Consistency training, CT (Song, Dhariwal, Chen, Sutskever 2023, Algorithm 3), without a teacher.

For a data point x and one noise draw z, adjacent levels of an N-level Karras grid (see
:mod:`~meanflow.methods.consistency`) give two points of (approximately) one trajectory, and the
online network at the noisier one is pulled towards the target network at the cleaner one:

    L = E[ d( f_theta(x + sigma_{n+1} z, sigma_{n+1}),  f_target(x + sigma_n z, sigma_n) ) ],   n ~ U{1..N-1}

with the target an EMA of the online network kept by the training loop. Both the number of levels
and the EMA decay follow a curriculum in the optimizer step k of K (``progress``):

    N(k)  = ceil( sqrt( k/K ((s1 + 1)^2 - s0^2) + s0^2 ) - 1 ) + 1
    mu(k) = exp( s0 ln(mu0) / N(k) )                          (paper, ``ema_rule="paper"``)
    mu(k) = exp( s0 ln(mu0) / (N(k) - 1) )                    (reference code, ``ema_rule="code"``)

Sources. Paper (as written in the project SPEC): N(k) as above, mu(k) with N(k) in the denominator
(so mu(0) = mu0), L2 and LPIPS metrics, uniform weighting. Constants read from the reference configs:
CIFAR-10 s0 = 2, s1 = 150, mu0 = 0.9, K = 800k (openai/consistency_models_cifar10,
configs/cifar10_ve_ct_adaptive.py); ImageNet-64 s1 = 200, K = 800k and LSUN s1 = 150, K = 1M, both
mu0 = 0.95 (openai/consistency_models, scripts/launch.sh). The PyTorch and JAX reference codes
compute ``c = -ln(mu0) s0`` and ``mu = exp(-c / (N(k) - 1))`` (their ``scales`` before the final +1),
so their decay at step 0 is mu0^s0 (0.81 for mu0 = 0.9), not mu0: that is the ``"code"`` option.
Both codes draw the index uniformly over the N - 1 neighbouring pairs, share the dropout RNG between
the online and the target pass (restoring the saved RNG state before the target call), use the same
z for both points (their Euler "solver" with the data as denoiser gives exactly ``x + sigma_n z``)
and weight uniformly. The reference's "l2" is a mean over dims; here "l2" is the paper's squared
norm (a sum).
LPIPS (the paper's best CT metric) needs pretrained weights the user supplies: ``metric="lpips"``
with ``lpips_weights`` (see ``meanflow.evaluation.lpips``); the default is L2.
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

EMA_RULES = ("paper", "code")


def ct_num_scales(step: int, total: int, s0: int, s1: int) -> int:
    """CT curriculum ``N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1`` (at least 2)."""
    frac = step / max(total, 1)
    inner = math.ceil(math.sqrt(frac * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1)
    return max(inner, 1) + 1


def ct_target_decay(n_scales: int, s0: int, mu0: float, rule: str = "paper") -> float:
    """CT target EMA decay ``exp(s0 ln(mu0) / N)`` (paper) or ``exp(s0 ln(mu0) / (N - 1))`` (code)."""
    denom = n_scales if rule == "paper" else n_scales - 1
    return math.exp(s0 * math.log(mu0) / denom)


@dataclass
class ConsistencyTraining(ConsistencyModel):
    """Consistency training with an EMA target and the paper's N(k) / mu(k) curricula.

    Defaults are the paper's CIFAR-10 settings except the metric (LPIPS there, available here only
    with user-supplied weights; the default is L2, which the paper also reports). Shared fields
    (sigma_min, sigma_max, rho, sigma_data, metric, huber_c,
    two_step_sigma, share_dropout_rng) are documented on :class:`ConsistencyModel`.

    Attributes:
        s0: Initial number of levels N(0).
        s1: Final number of levels minus one (150 for CIFAR-10 / LSUN, 200 for ImageNet-64).
        mu0: Target EMA decay at the start (paper: 0.9 CIFAR-10, 0.95 ImageNet-64 and LSUN).
        ema_rule: ``"paper"`` (mu = exp(s0 ln mu0 / N)) or ``"code"`` (/ (N - 1), the reference code).
    """

    s0: int = 2
    s1: int = 150
    mu0: float = 0.9
    ema_rule: str = "paper"

    needs: ClassVar[frozenset[str]] = frozenset({"progress", "target"})
    default_steps: ClassVar[int] = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.s0) != self.s0 or int(self.s1) != self.s1 or not 2 <= self.s0 <= self.s1 + 1:
            raise UserError(f"need integers 2 <= s0 <= s1 + 1, got s0={self.s0}, s1={self.s1}")
        if not 0.0 <= self.mu0 < 1.0:
            raise UserError(f"mu0 must be in [0, 1), got {self.mu0}")
        if self.ema_rule not in EMA_RULES:
            raise UserError(f"unknown ema_rule {self.ema_rule!r}; choose from {', '.join(EMA_RULES)}")

    def num_scales(self, progress: Progress) -> int:
        """N(k) at ``progress``."""
        return ct_num_scales(progress.step, progress.total, int(self.s0), int(self.s1))

    def target_decay(self, progress: Progress) -> float:
        """mu(k) = exp(s0 ln(mu0) / N(k)) (or / (N(k) - 1) with ``ema_rule="code"``)."""
        if self.mu0 == 0:
            return 0.0
        return ct_target_decay(self.num_scales(progress), int(self.s0), self.mu0, self.ema_rule)

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
        target: nn.Module | None = None,
    ) -> LossOutput:
        """``mean_b d(f_theta(x + sigma_{n+1} z, sigma_{n+1}), sg(f_target(x + sigma_n z, sigma_n)))``.

        Args:
            net: Online network ``net(z, t, h, y)`` (possibly DDP-wrapped).
            x: Data ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            noise: Overrides the draw ``z``, ``[B, *S]``.
            t: With ``r``, overrides the pair of levels: ``sigma(t)`` for the online network.
            r: ``sigma(r) < sigma(t)`` for the target network.
            net_kwargs: Extra keyword inputs passed unchanged to both network calls.
            progress: Training progress (the curriculum N(k)); required.
            target: The EMA target network (called without gradient); required.

        Returns:
            :class:`LossOutput` with metrics ``loss``, ``N`` (levels) and ``mu`` (target decay).
        """
        if progress is None:
            raise UserError("consistency training needs the training progress "
                            "(progress=Progress(step, total))")
        if target is None:
            raise UserError("consistency training needs a target network (target=...): the loop keeps it")
        b = x.shape[0]
        check_override("noise", noise, tuple(x.shape))
        n_scales = self.num_scales(progress)
        hi, lo = self.adjacent_sigmas(n_scales, b, x.device, t, r)
        z = torch.randn_like(x) if noise is None else noise.to(x.device, x.dtype)
        hi_x, lo_x = hi.to(x.dtype), lo.to(x.dtype)
        x_hi, x_lo = x + expand_like(hi_x, x) * z, x + expand_like(lo_x, x) * z
        online, tgt = self.pair(net, target, x_hi, hi_x, x_lo, lo_x, y, net_kwargs)
        loss = self.distance(online, tgt).mean()
        metrics = {
            "loss": loss.detach(),
            "N": torch.tensor(float(n_scales), device=x.device),
            "mu": torch.tensor(self.target_decay(progress), device=x.device),
        }
        return LossOutput(loss=loss, metrics=metrics)
