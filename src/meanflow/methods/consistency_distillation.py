"""Consistency distillation, CD (Song, Dhariwal, Chen, Sutskever 2023, Algorithm 2).

A frozen teacher solves the probability-flow ODE for one step between adjacent levels of a fixed
N-level Karras grid, and the online network at the noisier point is pulled towards the EMA target at
the teacher's estimate of the cleaner point:

    x_hi = x + sigma_{n+1} z,   x_lo = Phi_teacher(x_hi; sigma_{n+1} -> sigma_n),   n ~ U{1..N-1}
    L    = E[ d( f_theta(x_hi, sigma_{n+1}), f_target(x_lo, sigma_n) ) ]

The teacher is a velocity model of this project (flow matching or MeanFlow at h = 0):
``teacher(z_t, t, 0, y) = v ~ E[e - x | z_t]``. Its denoiser in the VE parametrisation follows from
``z_t = (1 - t) x + t e`` and ``v = e - x``: ``z_t - t v = (1 - t) x + t e - t e + t x = x``, so

    D(x_sigma, sigma) = E[x | x_sigma] = z_t - t v(z_t, t),
    z_t = x_sigma / (1 + sigma),   t = sigma / (1 + sigma),

and the EDM probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma``. One step from sigma to
sigma' < sigma (the reference code's solvers):

    Euler: x' = x + (sigma' - sigma) d,              d = (x - D(x, sigma)) / sigma
    Heun:  x' = x + (sigma' - sigma) (d + d~) / 2,   d~ = (x_E - D(x_E, sigma')) / sigma',  x_E = Euler's x'

(sigma' >= sigma_min > 0, so the division is safe). The teacher is called under ``torch.no_grad``
and never changes; the target network (an EMA of the online network, decay ``mu``, kept by the loop)
is also called without gradient, so the loss's gradient reaches only the online network.

Sources (reference code openai/consistency_models, cm/karras_diffusion.py and scripts/launch.sh):
N = 40 fixed, target EMA mu = 0.95, Heun teacher step, uniform weighting, dropout RNG shared between
the online and the target pass, L2 or LPIPS metric. CIFAR-10 CD uses N = 18 (JAX reference
openai/consistency_models_cifar10, configs/cifar10_ve_cd.py, with LPIPS and Heun; that code's CD step
passes no target parameters, so its target is the online network under stop-gradient, mu = 0: set
``num_scales=18, mu=0`` to follow it). LPIPS needs user-supplied weights (``metric="lpips"``,
``lpips_weights``); "l2" is the paper's squared norm (the reference's "l2" is its mean over dims).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.methods.base import LossOutput, Progress, check_override, expand_like
from meanflow.methods.consistency import ConsistencyModel, sigma_to_t

SOLVERS = ("heun", "euler")


@torch.no_grad()
def teacher_denoiser(teacher: nn.Module, x_sigma: Tensor, sigma: Tensor, y: Tensor | None = None,
                     net_kwargs: dict | None = None) -> Tensor:
    """Teacher denoiser ``D = z_t - t v(z_t, t)``.

    ``z_t = x_sigma / (1 + sigma)`` and ``t = sigma / (1 + sigma)`` (see the module docstring).

    Args:
        teacher: Velocity network ``teacher(z, t, h, y)`` (called with h = 0, without gradient).
        x_sigma: ``[B, *S]``.
        sigma: ``[B]``.
        y: Class ids ``[B]`` or ``None``.
        net_kwargs: Extra keyword inputs passed unchanged to the teacher.

    Returns:
        ``[B, *S]`` in ``x_sigma``'s dtype.
    """
    sigma = sigma.to(x_sigma.dtype)
    t = sigma_to_t(sigma)
    z = x_sigma / expand_like(1 + sigma, x_sigma)
    v = teacher(z, t, torch.zeros_like(t), y, **(net_kwargs or {})).to(x_sigma.dtype)
    return z - expand_like(t, x_sigma) * v


@torch.no_grad()
def teacher_ode_step(teacher: nn.Module, x: Tensor, sigma_from: Tensor, sigma_to: Tensor,
                     y: Tensor | None = None, solver: str = "heun", net_kwargs: dict | None = None) -> Tensor:
    """One Euler or Heun step of ``dx/dsigma = (x - D(x, sigma)) / sigma``, ``sigma_from -> sigma_to``.

    Args:
        teacher: Velocity network (see :func:`teacher_denoiser`).
        x: ``x_sigma`` at ``sigma_from``, ``[B, *S]``.
        sigma_from: ``[B]``.
        sigma_to: ``[B]``, > 0.
        y: Class ids ``[B]`` or ``None``.
        solver: ``"heun"`` (2 teacher calls) or ``"euler"`` (1).
        net_kwargs: Extra keyword inputs passed unchanged to every teacher call.

    Returns:
        ``x_sigma`` at ``sigma_to``, ``[B, *S]``.
    """
    if solver not in SOLVERS:
        raise UserError(f"unknown solver {solver!r}; choose from {', '.join(SOLVERS)}")
    s0, s1 = expand_like(sigma_from.to(x.dtype), x), expand_like(sigma_to.to(x.dtype), x)
    d = (x - teacher_denoiser(teacher, x, sigma_from, y, net_kwargs)) / s0
    x_euler = x + (s1 - s0) * d
    if solver == "euler":
        return x_euler
    d_next = (x_euler - teacher_denoiser(teacher, x_euler, sigma_to, y, net_kwargs)) / s1
    return x + (s1 - s0) * (d + d_next) / 2


@dataclass
class ConsistencyDistillation(ConsistencyModel):
    """Consistency distillation of a velocity teacher with a fixed grid and a fixed-decay EMA target.

    Defaults are the reference code's ImageNet-64 / LSUN settings (N = 40, mu = 0.95, Heun) with the
    L2 metric. Shared fields are documented on :class:`~meanflow.methods.consistency.ConsistencyModel`.

    Attributes:
        num_scales: N, the number of grid levels (reference 40; the paper's CIFAR-10 runs use 18).
        mu: Target EMA decay (constant).
        solver: Teacher ODE step, ``"heun"`` (reference) or ``"euler"``.
    """

    num_scales: int = 40
    mu: float = 0.95
    solver: str = "heun"

    needs: ClassVar[frozenset[str]] = frozenset({"progress", "target", "teacher"})
    default_steps: ClassVar[int] = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.num_scales) != self.num_scales or self.num_scales < 2:
            raise UserError(f"num_scales must be an integer >= 2, got {self.num_scales}")
        if not 0.0 <= self.mu <= 1.0:
            raise UserError(f"mu must be in [0, 1], got {self.mu}")
        if self.solver not in SOLVERS:
            raise UserError(f"unknown solver {self.solver!r}; choose from {', '.join(SOLVERS)}")

    def target_decay(self, progress: Progress) -> float:
        """The constant ``mu`` (the grid is fixed, so the decay is too)."""
        return float(self.mu)

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
        teacher: nn.Module | None = None,
    ) -> LossOutput:
        """``mean_b d(f_theta(x_hi, sigma_{n+1}), sg(f_target(Phi_teacher(x_hi), sigma_n)))``.

        Args:
            net: Online network ``net(z, t, h, y)`` (possibly DDP-wrapped).
            x: Data ``[B, *S]``.
            y: Class ids ``[B]`` or ``None`` (passed to all three networks).
            noise: Overrides the draw ``z`` of ``x_hi = x + sigma_{n+1} z``, ``[B, *S]``.
            t: With ``r``, overrides the pair of levels: ``sigma(t)`` for the online network.
            r: ``sigma(r) < sigma(t)``, where the teacher's step ends and the target is evaluated.
            net_kwargs: Extra keyword inputs passed unchanged to every network call.
            progress: Accepted for the interface; the fixed grid does not use it.
            target: The EMA target network; required.
            teacher: The frozen velocity teacher; required.

        Returns:
            :class:`LossOutput` with metrics ``loss`` and ``N``.
        """
        if target is None:
            raise UserError("consistency distillation needs a target network (target=...): the loop keeps it")
        if teacher is None:
            raise UserError("consistency distillation needs a teacher network (teacher=...): "
                            "set training.teacher to a flow-matching or MeanFlow run")
        b = x.shape[0]
        check_override("noise", noise, tuple(x.shape))
        hi, lo = self.adjacent_sigmas(int(self.num_scales), b, x.device, t, r)
        z = torch.randn_like(x) if noise is None else noise.to(x.device, x.dtype)
        hi_x, lo_x = hi.to(x.dtype), lo.to(x.dtype)
        x_hi = x + expand_like(hi_x, x) * z
        # The frozen teacher (eval mode) draws no random numbers, so its step may come first.
        x_lo = teacher_ode_step(teacher, x_hi, hi_x, lo_x, y, self.solver, net_kwargs)
        online, tgt = self.pair(net, target, x_hi, hi_x, x_lo, lo_x, y, net_kwargs)
        loss = self.distance(online, tgt).mean()
        metrics = {"loss": loss.detach(), "N": torch.tensor(float(self.num_scales), device=x.device)}
        return LossOutput(loss=loss, metrics=metrics)
