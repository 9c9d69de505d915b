"""Rectified flow's second stage (Liu, Gong, Liu 2022): reflow and distillation on coupled pairs.

A trained velocity model (flow matching, MeanFlow at ``h = 0``, or an earlier reflow) defines the
ODE ``dz/dt = v(z, t)``; solving it from noise ``e`` at t = 1 down to t = 0 gives a sample ``x`` of
the model, and ``(e, x)`` is a *coupled pair* (``meanflow reflow-pairs`` writes them, the ``pairs``
dataset reads them back and the training loop passes the stored ``e`` as the ``noise`` override).

* :class:`Reflow` is flow matching on those pairs: ``z_t = (1 - t) x + t e``, target ``e - x``,
  t ~ U(0, 1), L2 (the reference code draws t ~ U(eps, 1) with eps = 1e-3, in its reversed time:
  ``t = rand * (T - eps) + eps``; here the ends are not cut off). Because the pairs are coupled by a
  deterministic map, the k-rectified flow's paths are straighter than the (k-1)-th's (fewer steps
  for the same quality), measured by :func:`meanflow.evaluation.straightness.straightness`. Start it
  from the previous model (``training.init_from``), as the reference does.
* :class:`Distill` trains a k-step map on the pairs: for k = 1 the network at t = 1 regresses the
  whole displacement, ``|| (e - x) - net(e, 1, 0, y) ||^2``, so that ``x = e - net(e, 1, 0, y)``
  is one Euler step. (The reference runs time the other way, t = 1 data, and trains this at its
  t = eps with inputs ``999 t``; here it is the project's t = 1.) For k > 1 each sample gets one of
  the k times ``t_i = 1 - i / k`` (i = 0..k-1) of the uniform k-step grid, ``z = (1 - t_i) x + t_i e``,
  target ``e - x``: the sampler's k Euler steps then land exactly on the straight line to ``x``.

Both declare ``needs_pairs``: the loop refuses them on data without stored noise. Called directly
without ``noise`` they fall back to a fresh Gaussian draw (plain flow matching / its k-step variant).
"""

from __future__ import annotations

from collections.abc import Callable
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
    expand_like,
    interpolate,
    per_sample_sq,
)
from meanflow.methods.flow_matching import FlowMatching
from meanflow.methods.solvers import solve_ode
from meanflow.methods.time_sampling import uniform_schedule

DISTILL_METRICS = ("l2", "lpips")


def velocity_field(net: nn.Module, y: Tensor | None = None,
                   net_kwargs: dict | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """The network's instantaneous velocity as an ODE right-hand side ``fn(z, t) -> dz/dt``.

    ``fn(z, t) = net(z, t 1_B, 0, y)`` for ``z`` ``[B, *S]`` and a 0-dim time ``t``: the velocity of
    flow matching, reflow, or MeanFlow's ``u(z, t, t) = v(z, t)`` (``h = t - r = 0``). The form that
    ``meanflow.methods.solvers.solve_ode`` and the straightness metric take. Wrap calls in
    ``torch.no_grad()`` where no gradient is wanted.
    """
    kw = net_kwargs or {}

    def fn(z: Tensor, t: Tensor) -> Tensor:
        tb = torch.as_tensor(t, device=z.device).to(z.dtype).expand(z.shape[0])
        return net(z, tb, torch.zeros_like(tb), y, **kw).to(z.dtype)

    return fn


def solve_to_data(net: nn.Module, noise: Tensor, y: Tensor | None = None, *, solver: str = "rk45",
                  steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5,
                  net_kwargs: dict | None = None) -> tuple[Tensor, int]:
    """Solve ``dz/dt = v(z, t)`` from ``z_1 = noise`` at t = 1 to t = 0.

    Args:
        net: Velocity network (called at ``h = 0``).
        noise: ``[B, *S]``.
        y: Class ids ``[B]`` or ``None``.
        solver: ``"rk45"`` (adaptive Dormand-Prince, the reference's choice at tolerance 1e-5; one
            step size for the whole batch), ``"heun"`` or ``"euler"`` (``steps`` uniform steps).
        steps: Steps of the fixed-step solvers.
        rtol: Relative tolerance of rk45.
        atol: Absolute tolerance of rk45.
        net_kwargs: Extra keyword inputs passed unchanged to every network call.

    Returns:
        ``(z_0, nfe)``: samples ``[B, *S]`` and the number of batch evaluations of the network.
    """
    grid = uniform_schedule(1 if solver == "rk45" else steps, device=noise.device).to(noise.dtype)
    fn = velocity_field(net, y, net_kwargs)
    with torch.no_grad():
        z, nfe = solve_ode(fn, noise, grid, method=solver, rtol=rtol, atol=atol)
    return z, int(nfe)


@dataclass
class Reflow(FlowMatching):
    """Reflow: flow matching on coupled (noise, sample) pairs of a previous flow (needs pairs data).

    The loss and the samplers are flow matching's; only the default time distribution differs
    (uniform: U(0, 1); the reference draws U(1e-3, 1)) and the loop must give it the pairs' noise.

    Attributes:
        time_dist: ``"uniform"`` (U(0, 1); the reference's U(1e-3, 1) up to the cut-off) or
            ``"logit_normal"``.
        t_mean: Logit-normal mean of t.
        t_std: Logit-normal std of t.
        solver: Sampler: ``"euler"``, ``"heun"`` or ``"rk45"`` (see :class:`FlowMatching`).
    """

    time_dist: str = "uniform"

    needs_pairs: ClassVar[bool] = True


_EULER = FlowMatching(time_dist="uniform", solver="euler")


@dataclass
class Distill(Method):
    """Distill a flow into a k-step map on its coupled (noise, sample) pairs (needs pairs data).

    Attributes:
        k: Number of Euler steps the map is trained for (and sampled with by default).
        metric: ``"l2"``: ``||(e - x) - net(z_t, t, 0, y)||^2`` (summed over dims); ``"lpips"``:
            LPIPS between the one-step estimate ``x_hat = z_t - t net(z_t, t, 0, y)`` and ``x``
            (images; the reference's best setting for k = 1).
        lpips_weights: Path of the LPIPS-VGG weights file (``metric="lpips"`` only; see
            :mod:`meanflow.evaluation.lpips`).
        lpips_resize: Side images are resized to before LPIPS (``None``: native size).
    """

    k: int = 1
    metric: str = "l2"
    lpips_weights: str | None = None
    lpips_resize: int | None = 224

    needs_pairs: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise UserError(f"k must be an integer >= 1, got {self.k!r}")
        if self.metric not in DISTILL_METRICS:
            raise UserError(f"unknown metric {self.metric!r}; choose from {', '.join(DISTILL_METRICS)}")
        if self.metric == "lpips" and not self.lpips_weights:
            raise UserError("metric 'lpips' needs lpips_weights: the path of the LPIPS VGG16 weights file "
                            "(see meanflow.evaluation.lpips)")
        if self.metric != "lpips" and self.lpips_weights is not None:
            raise UserError(f"lpips_weights is set but metric is {self.metric!r}; set metric=lpips to use it")
        self.default_steps = self.k  # per instance: the map is meant for its own k steps

    def grid_times(self, b: int, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
        """One of the k grid times ``t_i = 1 - i / k`` (i = 0..k-1) per sample, uniformly: ``[b]``."""
        i = torch.randint(0, self.k, (b,), device=device)
        return (1 - i.to(torch.float64) / self.k).to(dtype)

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
        """Distillation loss on a batch of pairs ``(noise, x)``.

        ``z = (1 - t) x + t e`` with t a grid time (``t = 1``, ``z = e`` for k = 1); l2:
        ``mean_i ||net(z, t, 0, y) - (e - x)||^2``; lpips: ``mean_i LPIPS(z - t net(z, t, 0, y), x)``.

        Args:
            net: Network ``net(z, t, h, y)``.
            x: Samples of the pairs ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            noise: Noise of the pairs ``[B, *S]`` (the loop passes it); ``None`` draws fresh noise.
            t: Optional fixed times ``[B]`` (any value in (0, 1], not only grid times).
            r: Must equal ``t`` if given (a single time).
            net_kwargs: Extra keyword inputs passed unchanged to the network call.

        Returns:
            :class:`LossOutput` with metrics ``loss`` and ``mse`` (the velocity error, equal to the
            loss for l2).
        """
        b = x.shape[0]
        check_override("noise", noise, tuple(x.shape))
        check_override("t", t, (b,))
        check_override("r", r, (b,))
        if r is not None and t is not None and not torch.equal(r, t):
            raise UserError("distill has a single time: r must equal t (or be omitted)")
        if t is None:
            t = r if r is not None else self.grid_times(b, x.device, x.dtype)
        t = t.to(x.device, x.dtype)
        e = torch.randn_like(x) if noise is None else noise.to(x.device, x.dtype)
        z, v = interpolate(x, e, t)
        pred = net(z, t, torch.zeros_like(t), y, **(net_kwargs or {}))
        mse = per_sample_sq(pred.float() - v.float())
        if self.metric == "l2":
            err = mse
        else:
            from meanflow.methods.consistency import distance

            x_hat = z - expand_like(t, z) * pred
            err = distance(x_hat, x, "lpips", lpips_weights=self.lpips_weights,
                           lpips_resize=self.lpips_resize)
        loss = err.mean()
        return LossOutput(loss=loss, metrics={"loss": loss.detach(), "mse": mse.mean().detach()})

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
        """``steps`` Euler steps ``z <- z - (t_i - t_{i+1}) net(z, t_i, 0, y)`` on the uniform grid
        (or ``schedule``); with ``steps = k`` exactly the grid the map was trained on.

        Args:
            net: Network.
            noise: ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            steps: Number of steps (``default_steps`` = k).
            schedule: Optional decreasing grid ``[steps + 1]`` from 1 to 0.
            net_kwargs: Extra keyword inputs passed unchanged to every network call.
            generator: Unused (deterministic).

        Returns:
            Samples ``[B, *S]``.
        """
        return _EULER.sample(net, noise, y, steps, schedule, net_kwargs=net_kwargs)
