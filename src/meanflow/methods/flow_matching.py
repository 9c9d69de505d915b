"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2022), the single-time peer.

The network predicts the instantaneous velocity ``v(z_t, t)`` and is called with ``h = 0``.
Loss ``||v_theta(z_t, t) - (e - x)||^2`` (summed over non-batch dims, averaged over the batch: the
same reduction as MeanFlow, so that MeanFlow with ``ratio = 0`` and ``norm_p = 0`` is exactly this
loss). Sampling integrates ``dz/dt = v`` from t = 1 down to t = 0 with Euler or Heun steps, or with
adaptive RK45 (``meanflow.methods.solvers.solve_ode``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.methods.base import (
    LossOutput,
    Method,
    NoiseSource,
    check_override,
    interpolate,
    per_sample_sq,
    resolve_schedule,
)
from meanflow.methods.solvers import solve_ode
from meanflow.methods.time_sampling import check_time_dist, sample_time

SOLVERS = ("euler", "heun", "rk45")
RK45_TOL = 1e-5
"""rtol = atol of the ``"rk45"`` solver (the rectified-flow reference's setting)."""


@dataclass
class FlowMatching(Method):
    """Conditional flow matching with the linear path.

    Attributes:
        time_dist: ``"logit_normal"`` or ``"uniform"``.
        t_mean: Logit-normal mean of t.
        t_std: Logit-normal std of t.
        solver: ``"euler"`` (1 NFE per step), ``"heun"`` (2 NFE per step) or ``"rk45"`` (adaptive
            Dormand-Prince with rtol = atol = 1e-5 from t = 1 to 0; ``steps`` is then ignored and
            a ``schedule`` only validated, its interior points unused).
    """

    time_dist: str = "logit_normal"
    t_mean: float = 0.0
    t_std: float = 1.0
    solver: str = "euler"

    default_steps: ClassVar[int] = 50

    def __post_init__(self) -> None:
        check_time_dist(self.time_dist, self.t_std)
        if self.solver not in SOLVERS:
            raise UserError(f"unknown solver {self.solver!r}; choose from {', '.join(SOLVERS)}")

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
    ) -> LossOutput:
        """``mean_i ||net(z_t, t, 0, y) - (e - x)||^2`` with ``z_t = (1 - t) x + t e``.

        Args:
            net: Network ``net(z, t, h, y)``.
            x: Data ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            noise: Optional fixed noise ``[B, *S]``.
            t: Optional fixed times ``[B]``.
            r: Ignored except for validation (must equal ``t`` if given): flow matching has one time.
            net_kwargs: Extra keyword inputs passed unchanged to the network call.

        Returns:
            :class:`LossOutput` with metrics ``loss`` and ``mse`` (equal here).
        """
        b = x.shape[0]
        check_override("noise", noise, tuple(x.shape))
        check_override("t", t, (b,))
        check_override("r", r, (b,))
        if r is not None and t is not None and not torch.equal(r, t):
            raise UserError("flow matching has a single time: r must equal t (or be omitted)")
        if t is None:
            t = r if r is not None else sample_time(
                b, self.time_dist, self.t_mean, self.t_std, device=x.device, dtype=x.dtype
            )
        t = t.to(x.device, x.dtype)
        e = torch.randn_like(x) if noise is None else noise.to(x.device, x.dtype)
        z, v = interpolate(x, e, t)
        pred = net(z, t, torch.zeros_like(t), y, **(net_kwargs or {}))
        err = per_sample_sq(pred.float() - v.float())
        loss = err.mean()
        return LossOutput(loss=loss, metrics={"loss": loss.detach(), "mse": loss.detach()})

    @torch.no_grad()
    def velocity(self, net: nn.Module, z: Tensor, t: Tensor, y: Tensor | None = None,
                 net_kwargs: dict | None = None) -> Tensor:
        """Predicted velocity ``v(z, t)`` for a scalar time ``t`` (0-dim tensor); ``[B, *S]``."""
        tb = t.to(z.dtype).expand(z.shape[0])
        return net(z, tb, torch.zeros_like(tb), y, **(net_kwargs or {})).to(z.dtype)

    @torch.no_grad()
    def sample(
        self,
        net: nn.Module,
        noise: Tensor,
        y: Tensor | None = None,
        steps: int = 1,
        schedule: Tensor | None = None,
        *,
        net_kwargs: dict | None = None,
        generator: NoiseSource = None,
    ) -> Tensor:
        """Integrate ``dz/dt = v`` from t = 1 (noise) to t = 0 (data).

        Euler: ``z <- z - (t_i - t_{i+1}) v(z, t_i)``. Heun (2nd order, 2 NFE per step):
        ``z' = z - dt v(z, t_i)``, ``z <- z - dt (v(z, t_i) + v(z', t_{i+1})) / 2``. RK45: adaptive
        steps from t = 1 to 0 (``steps`` ignored).

        Args:
            net: Network.
            noise: ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            steps: Number of steps k >= 1 (ignored by rk45).
            schedule: Optional decreasing grid ``[k + 1]`` from 1 to 0.
            net_kwargs: Extra keyword inputs passed unchanged to every network call.
            generator: Unused (the sampler is deterministic given the noise).

        Returns:
            Samples ``[B, *S]``.
        """
        grid = resolve_schedule(steps, schedule, noise.device).to(noise.dtype)
        z, _ = solve_ode(lambda z, t: self.velocity(net, z, t, y, net_kwargs), noise, grid,
                         method=self.solver, rtol=RK45_TOL, atol=RK45_TOL)
        return z
