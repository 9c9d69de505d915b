"""α-Flow (Zhang et al., arXiv 2510.20771): MeanFlow's objective as the end of a family that starts at
trajectory flow matching, walked by a curriculum on α.

For ``r < t`` and a step ``dt = α (t - r)``, the intermediate time is ``s = t - dt`` and the point
``z_s = z_t - dt v``. The α-target is the interval-splitting identity with one Euler step of the
(guided) velocity and the network's own average velocity for the rest of the interval,

    u_tgt = (dt v + (s - r) u_θ(z_s, r, s)) / (t - r) = α v + (1 - α) u_θ(z_s, r, s)    (α > 0),

so α = 1 is trajectory flow matching (target ``v`` for every interval) and α -> 0 is MeanFlow, whose
continuous target ``v - (t - r) du/dt`` (a JVP with tangent ``(v, 0, 1)`` on ``(z, r, t)``) is used
once α is snapped to 0. Rows with ``r = t`` (the first ``floor(ratio_fm B)``) regress ``v``.

Loss per row ``i`` (``err_i`` the mean squared error over the non-batch dims, as the official code):
``w_i err_i / stopgrad(err_i + c)^p`` with ``w_i = α`` for the discrete rows and 1 otherwise; p = 1
in the paper. Targets never carry gradients.

Curriculum on training progress ``f = step / total`` (official ``get_ratio``, ``sigmoid``): with the
window ``[f0, f1]`` and ``m = (f0 + f1) / 2``, ``α = α_0 + (α_1 - α_0) σ(γ (f - m) / (f1 - f0))``
inside it, ``α_0`` before and ``α_1`` after; then ``α < c -> 0`` and ``α > 1 - c -> 1`` (the snap:
without it a tiny α would keep every row on the discrete branch with targets of almost ``u_θ``).

Confirmed in ``snap-research/alphaflow@b0fef77`` (``src/training/loss.py``, class ``AlphaFlowLoss``):
the schedule and its snap, the batch split and the ``minmax`` (t, r) draw, the two targets and the
clip of the discrete one, the weights ``{1, α} / (err + ε)``, the guidance with label dropout inside
the guidance interval, and the samplers (``reverse_recflow_step``: trajectory and consistency). Not
in the released configs: the time distributions (LN(-0.4, 1) here), ε (1e-3 here) and the default
clip of the discrete target (none here; the XL/2 configs set 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.methods.base import (
    LossOutput,
    Method,
    NoiseSource,
    Progress,
    check_override,
    expand_like,
    fresh_noise,
    given_times,
    interpolate,
    resolve_schedule,
)
from meanflow.methods.jvp import jvp, moving_rows, pad_rows, take_rows
from meanflow.methods.time_sampling import check_time_dist, sample_time

SCHEDULES = ("sigmoid", "linear", "constant")
SAMPLERS = ("consistency", "trajectory")


def alpha_at(fraction: float, *, start: float = 1.0, end: float = 0.0, schedule: str = "sigmoid",
             window: tuple[float, float] = (0.0, 1.0), gamma: float = 25.0, snap: float = 0.005) -> float:
    """α at training progress ``fraction`` in [0, 1] (see the module docstring), snapped.

    ``constant`` is ``start`` throughout; ``linear`` goes from ``start`` to ``end`` across the window.
    """
    f0, f1 = window
    if schedule == "constant" or fraction < f0:
        a = start
    elif fraction > f1:
        a = end
    elif schedule == "linear":
        a = start + (end - start) * (fraction - f0) / (f1 - f0)
    else:
        mid = f0 + (f1 - f0) / 2
        a = start + (end - start) / (1.0 + math.exp(-gamma * (fraction - mid) / (f1 - f0)))
    if a < snap:
        return 0.0
    if a > 1.0 - snap:
        return 1.0
    return a


@dataclass
class AlphaFlow(Method):
    """α-Flow objective (curriculum from trajectory flow matching to MeanFlow) and its samplers.

    Defaults are the official B/2 settings (no guidance, half the batch with ``r = t``, α from 1 to 0
    over the whole run, γ = 25, snap 0.005).

    Attributes:
        ratio_fm: Share of each batch with ``r = t`` (the first ``floor(ratio_fm B)`` rows).
        t_mean, t_std: Logit-normal of the ``r = t`` rows' t and of the first draw of the others.
        r_mean, r_std: Logit-normal of the second draw; ``t = max``, ``r = min`` of the two.
        alpha_start, alpha_end: α at the start and the end of the curriculum.
        alpha_schedule: ``"sigmoid"`` (the paper), ``"linear"`` or ``"constant"`` (``alpha_start``).
        alpha_window: ``[f0, f1]``, the fractions of training between which α moves (XL/2: steps
            600K-1M of 1.2M, i.e. ``[0.5, 0.8333]``).
        gamma: Steepness γ of the sigmoid.
        alpha_snap: c of the snap (α < c -> 0, α > 1 - c -> 1).
        clamp_target: Clip of the discrete target to ``[-clamp, clamp]`` (None: no clip).
        norm_p: Power p of the adaptive weight (1 in the paper).
        norm_eps: ε of the adaptive weight.
        omega, kappa: Guidance ``v_g = ω v + κ u(z, t, t | c) + (1 - ω - κ) u(z, t, t | ∅)`` for
            ``t_min < t < t_max`` (effective scale ω / (1 - κ)); 1 and 0: none.
        t_min, t_max: The guidance interval (open).
        class_dropout: Probability of the null label, drawn only for rows inside the interval.
        num_classes: Number of real classes (null id ``num_classes``); 0 = unconditional.
        sampler: k > 1 steps: ``"consistency"`` (predict the data with ``u(z, 0, t_i)``, re-noise to
            ``t_{i+1}``; the paper's 2-NFE) or ``"trajectory"`` (MeanFlow's ``z - (t_i - t_{i+1}) u``).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"progress"})

    ratio_fm: float = 0.5
    t_mean: float = -0.4
    t_std: float = 1.0
    r_mean: float = -0.4
    r_std: float = 1.0
    alpha_start: float = 1.0
    alpha_end: float = 0.0
    alpha_schedule: str = "sigmoid"
    alpha_window: tuple[float, float] = (0.0, 1.0)
    gamma: float = 25.0
    alpha_snap: float = 0.005
    clamp_target: float | None = None
    norm_p: float = 1.0
    norm_eps: float = 1e-3
    omega: float = 1.0
    kappa: float = 0.0
    t_min: float = 0.0
    t_max: float = 1.0
    class_dropout: float = 0.0
    num_classes: int = 0
    sampler: str = "consistency"

    def __post_init__(self) -> None:
        self.alpha_window = tuple(float(f) for f in self.alpha_window)
        checks = [
            (0.0 <= self.ratio_fm <= 1.0, f"ratio_fm must be in [0, 1], got {self.ratio_fm}"),
            (0.0 <= self.alpha_start <= 1.0 and 0.0 <= self.alpha_end <= 1.0,
             f"alpha_start and alpha_end must be in [0, 1], got {self.alpha_start}, {self.alpha_end}"),
            (self.alpha_schedule in SCHEDULES,
             f"unknown alpha_schedule {self.alpha_schedule!r}; choose from {', '.join(SCHEDULES)}"),
            (len(self.alpha_window) == 2 and 0.0 <= self.alpha_window[0] < self.alpha_window[1] <= 1.0,
             f"alpha_window must be [f0, f1] with 0 <= f0 < f1 <= 1, got {list(self.alpha_window)}"),
            (self.gamma > 0, f"gamma must be > 0, got {self.gamma}"),
            (0.0 <= self.alpha_snap < 0.5, f"alpha_snap must be in [0, 0.5), got {self.alpha_snap}"),
            (self.clamp_target is None or self.clamp_target > 0,
             f"clamp_target must be > 0 or null, got {self.clamp_target}"),
            (self.norm_p >= 0, f"norm_p must be >= 0, got {self.norm_p}"),
            (self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}"),
            (0.0 <= self.kappa < 1.0, f"kappa must be in [0, 1), got {self.kappa}"),
            (self.omega > 0, f"omega must be > 0, got {self.omega}"),
            (0.0 <= self.t_min < self.t_max <= 1.0,
             f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}"),
            (0.0 <= self.class_dropout <= 1.0, f"class_dropout must be in [0, 1], got {self.class_dropout}"),
            (int(self.num_classes) == self.num_classes and self.num_classes >= 0,
             f"num_classes must be an integer >= 0, got {self.num_classes}"),
            (self.sampler in SAMPLERS,
             f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        check_time_dist("logit_normal", self.t_std)
        check_time_dist("logit_normal", self.r_std)
        if self.num_classes == 0 and (self.guided or self.class_dropout > 0):
            raise UserError("guidance (omega != 1 or kappa != 0) and class_dropout need num_classes > 0")

    @property
    def guided(self) -> bool:
        return self.omega != 1.0 or self.kappa != 0.0

    def alpha(self, progress: Progress) -> float:
        """The curriculum's α at ``progress`` (snapped)."""
        return alpha_at(progress.fraction, start=self.alpha_start, end=self.alpha_end,
                        schedule=self.alpha_schedule, window=self.alpha_window, gamma=self.gamma,
                        snap=self.alpha_snap)

    # ------------------------------------------------------------------ training

    def sample_t_r(self, n: int, device=None) -> tuple[Tensor, Tensor]:
        """``(t, r)``, each ``[n]``: the first ``floor(ratio_fm n)`` rows ``r = t`` ~ LN(t_mean, t_std),
        the others ``t = max(a, b)``, ``r = min(a, b)`` with ``a`` ~ LN(t_mean, t_std), ``b`` ~ LN(r_mean,
        r_std)."""
        n_fm = int(n * self.ratio_fm)
        t_fm = sample_time(n_fm, "logit_normal", self.t_mean, self.t_std, device=device)
        a = sample_time(n - n_fm, "logit_normal", self.t_mean, self.t_std, device=device)
        b = sample_time(n - n_fm, "logit_normal", self.r_mean, self.r_std, device=device)
        return torch.cat([t_fm, torch.maximum(a, b)]), torch.cat([t_fm, torch.minimum(a, b)])

    @torch.no_grad()
    def guide(self, net: nn.Module, z: Tensor, t: Tensor, v: Tensor, y: Tensor,
              net_kwargs: dict | None = None) -> tuple[Tensor, Tensor]:
        """Label dropout and the guided velocity (no gradient), as the official code orders them.

        ``drop = inside & (U < class_dropout)`` with ``inside = t_min < t < t_max``; labels of dropped
        rows become the null class; then, inside the interval,
        ``v_g = ω v + κ u(z, t, t | y') + (1 - ω - κ) u(z, t, t | ∅)`` (``y'`` the labels after dropout),
        and ``v_g = v`` outside. Returns ``(v_g [B, *S], y' [B])``.
        """
        kw = net_kwargs or {}
        inside = (t > self.t_min) & (t < self.t_max)
        null = torch.full_like(y, self.num_classes)
        if self.class_dropout > 0:
            drop = inside & (torch.rand(y.shape[0], device=y.device) < self.class_dropout)
            y = torch.where(drop, null, y)
        if not self.guided:
            return v, y
        zero = torch.zeros_like(t)
        v_g = self.omega * v
        if self.omega + self.kappa != 1.0:
            v_g = v_g + (1 - self.omega - self.kappa) * net(z, t, zero, null, **kw).to(v.dtype)
        if self.kappa != 0.0:
            v_g = v_g + self.kappa * net(z, t, zero, y, **kw).to(v.dtype)
        return torch.where(expand_like(inside, v), v_g, v), y

    @torch.no_grad()
    def discrete_target(self, net: nn.Module, z: Tensor, t: Tensor, r: Tensor, v: Tensor, alpha: float,
                        y: Tensor | None, net_kwargs: dict | None = None) -> Tensor:
        """``(dt v + (s - r) u_θ(z - dt v, r, s)) / (t - r)`` with ``dt = α (t - r)``, ``s = t - dt``, for
        rows with ``r < t`` (``[B, *S]`` in, ``[B, *S]`` out, no gradient), clipped by ``clamp_target``.
        At α = 1 the network is not called (the target is ``v``, clipped as the official code does)."""
        h = t - r
        if alpha >= 1.0:
            out = v
        else:
            dt = alpha * h
            s = t - dt
            u_s = net(z - expand_like(dt, v) * v, s, s - r, y, **(net_kwargs or {})).to(v.dtype)
            out = (expand_like(dt, v) * v + expand_like(s - r, v) * u_s) / expand_like(h, v)
        if self.clamp_target is not None:
            out = out.clamp(-self.clamp_target, self.clamp_target)
        return out

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
        """α-Flow loss on a batch ``x [B, *S]`` at training ``progress`` (required: it sets α).

        Rows with ``r = t`` regress ``v_g``; with α > 0 the rows with ``r < t`` regress the discrete
        target (one extra no-grad forward), with α = 0 the MeanFlow target through one network call
        that returns the prediction with its graph and ``du/dt`` (tangent ``(v_g, 0, 1)``) of those rows
        only. Metrics: ``loss``, ``mse`` (mean unweighted error), ``alpha``, ``frac_r_neq_t``.
        """
        if progress is None:
            raise UserError("alphaflow needs the training progress (progress=Progress(step, total))")
        b = x.shape[0]
        for name, value in (("noise", noise), ("t", t), ("r", r)):
            check_override(name, value, tuple(x.shape) if name == "noise" else (b,))
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        t, r = given_times(t, r, lambda: self.sample_t_r(b, device=x.device), x)
        e = torch.randn_like(x) if noise is None else noise.to(x.device, dtype)
        z, v = interpolate(x, e, t)
        if y is not None and self.num_classes > 0:
            v, y = self.guide(net, z, t, v, y, net_kwargs)
        alpha = self.alpha(progress)
        moving = r != t
        with torch.autocast(device_type=x.device.type, enabled=False):
            if alpha == 0.0:
                u, target = self._continuous(net, z, t, r, v, y, net_kwargs)
            else:
                target = self._discrete_rows(net, z, t, r, v, alpha, y, net_kwargs, moving)
                u = net(z, t, t - r, y, **(net_kwargs or {})).to(dtype)
            err = (u - target.detach()).square().flatten(1).mean(dim=1)
            w = torch.where(moving, torch.full_like(err, alpha), torch.ones_like(err)) if alpha > 0 else 1.0
            loss = (w * err / (err.detach() + self.norm_eps).pow(self.norm_p)).mean()
        metrics = {"loss": loss.detach(), "mse": err.detach().mean(), "alpha": torch.tensor(alpha),
                   "frac_r_neq_t": moving.float().mean()}
        return LossOutput(loss=loss, metrics=metrics)

    @torch.no_grad()
    def _discrete_rows(self, net, z, t, r, v, alpha, y, net_kwargs, moving) -> Tensor:
        """``v`` with the discrete target written into the ``r != t`` rows (the network sees only them)."""
        if (alpha >= 1.0 and self.clamp_target is None) or not bool(moving.any()):
            return v
        idx = moving.nonzero().squeeze(1)
        rows = take_rows(idx, z.shape[0], z, t, r, v, y, net_kwargs)
        return v.index_copy(0, idx, self.discrete_target(net, *rows[:4], alpha, *rows[4:]))

    def _continuous(self, net, z, t, r, v, y, net_kwargs) -> tuple[Tensor, Tensor]:
        """Prediction (graph) and MeanFlow target ``v - (t - r) du/dt`` (detached), the tangent only on
        the ``r != t`` rows (put first for networks that take partial tangents)."""
        b = z.shape[0]
        order, rows = moving_rows(net, t, r)
        zs, ts, rs, vs, ys, kw = take_rows(order, b, z, t, r, v, y, net_kwargs)
        ones = torch.ones_like(ts)
        u, dudt = jvp(net, zs, ts, ts - rs, ys, vs, ones, ones, net_kwargs=kw, rows=rows)
        u = u.to(z.dtype)
        target = (vs - expand_like(ts - rs, vs) * pad_rows(dudt.to(z.dtype), b)).detach()
        if order is not None:
            back = torch.argsort(order)
            u, target = u.index_select(0, back), target.index_select(0, back)
        return u, target

    # ------------------------------------------------------------------ sampling

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
        """k-step generation on the grid ``1 = t_0 > ... > t_k = 0`` (uniform unless ``schedule``).

        ``consistency``: ``x̂ = z - t_i u(z, 0, t_i)``, ``z <- (1 - t_{i+1}) x̂ + t_{i+1} ε`` with fresh
        ``ε`` from ``generator`` (official ``reverse_recflow_step`` with consistency sampling; the
        XL/2 2-NFE grid is ``[1, 0.55, 0]``). ``trajectory``: ``z <- z - (t_i - t_{i+1}) u(z, t_{i+1},
        t_i)``. One step is ``e - u(e, 0, 1)`` either way.
        """
        kw = net_kwargs or {}
        grid = resolve_schedule(steps, schedule, noise.device).to(noise.dtype)
        z, b = noise, noise.shape[0]
        for i in range(grid.numel() - 1):
            t_cur, t_next = grid[i], grid[i + 1]
            t = t_cur.expand(b)
            if self.sampler == "trajectory":
                z = z - (t_cur - t_next) * net(z, t, (t_cur - t_next).expand(b), y, **kw)
                continue
            x_hat = z - t_cur * net(z, t, t, y, **kw)
            if float(t_next) > 0.0:
                x_hat = (1 - t_next) * x_hat + t_next * fresh_noise(x_hat, generator)
            z = x_hat
        return z
