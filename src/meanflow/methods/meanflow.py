"""MeanFlow (Geng, Deng, Bai, Kolter, He, 2025): learn the average velocity, sample in one step.

The network models the average velocity between times ``r <= t`` along the flow,

    u(z_t, r, t) = 1/(t - r) * integral_r^t v(z_s, s) ds,

called as ``net(z, t, h = t - r, y)``. Differentiating ``(t - r) u`` in t gives the MeanFlow identity

    u(z_t, r, t) = v(z_t, t) - (t - r) * du/dt,   du/dt = v . d_z u + 0 . d_r u + 1 . d_t u,

a Jacobian-vector product with tangent ``(v, 0, 1)`` on ``(z, r, t)``, i.e. ``(v, 1, 1)`` on
``(z, t, h)``. Training regresses ``u_theta`` onto ``stopgrad(v - (t - r) du_theta/dt)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.methods.base import (
    LossOutput,
    Method,
    NoiseSource,
    check_override,
    expand_like,
    given_times,
    interpolate,
    per_sample_sq,
    resolve_schedule,
)
from meanflow.methods.interval_weight import check_interval_weight, interval_lambda, kim_beta
from meanflow.methods.jvp import check_jvp_precision, moving_rows, take_rows
from meanflow.methods.meanflow_objective import TANGENTS, compiled_objective, jvp_target, objective
from meanflow.methods.time_sampling import TIME_PAIRINGS, check_time_dist, sample_t_r


class _Needs:
    """``MeanFlow.needs``: ``{"progress"}`` with ``interval_weight="kim"``, else nothing (per instance)."""

    def __get__(self, obj, cls=None) -> frozenset[str]:
        return frozenset({"progress"} if obj is not None and obj.interval_weight != "none" else ())


@dataclass
class MeanFlow(Method):
    """MeanFlow objective and its one-/few-step sampler.

    Defaults are the paper's ImageNet-256 settings (25% of samples with r != t, t, r ~ LN(-0.4, 1.0)
    sorted, adaptive weight p = 1, c = 0.01, no guidance).

    Attributes:
        ratio: Fraction of each batch with ``r != t``; the rest have ``r = t`` (flow matching).
        time_dist: ``"logit_normal"`` or ``"uniform"``.
        t_mean: Logit-normal mean of the t draw (both draws with ``time_pairing="sort"``).
        t_std: Logit-normal std of the t draw.
        r_mean: Logit-normal mean of the r draw (``time_pairing="min"`` only).
        r_std: Logit-normal std of the r draw (``time_pairing="min"`` only).
        time_pairing: ``"sort"`` (paper / official JAX) or ``"min"`` (official CIFAR-10 "v1").
        norm_p: Power p of the adaptive weight; 0 is plain L2, 0.5 pseudo-Huber-like, 1 the default.
        norm_eps: Constant c of the adaptive weight ``1 / stopgrad((err + c)^p)``.
        omega: Guidance scale ω folded into the target (1 = no guidance).
        kappa: Mixing factor κ of the conditional prediction; effective scale ω / (1 - κ).
        t_start: Guidance is applied for ``t_start <= t <= t_end`` only.
        t_end: See ``t_start``.
        class_dropout: Probability of replacing a label by the null class (and ``v_g`` by ``v``).
        num_classes: Number of real classes; the null class id is ``num_classes``. 0 = unconditional.
        compile: Run the JVP + loss under ``torch.compile`` (tested to give the eager loss and
            gradients; building takes tens of seconds on CPU). Time draws, guidance and label
            dropout stay eager.
        jvp_precision: ``"float32"`` (the official codes): the network's forward and tangent run
            in float32 with autocast off, whatever the training precision. ``"autocast"``: they
            follow the surrounding autocast (bf16 on GPUs: half the activation memory, tensor-core
            products and the fused attention tangent); the target and the loss stay float32.
            Not a published setting (bf16 JVPs are a suspect in late-training NaNs of some ports).
        tangent: The JVP tangent on ``(z, r, t)`` as ``"v" + dr + dt``: ``"v01"`` (the identity's
            ``(v, 0, 1)``, the default) or one of the paper's ablated wrong tangents ``"v00"``,
            ``"v10"``, ``"v11"`` (Table 1c: FID 61.06 vs 268.06, 329.22, 137.96). For the ablation only.
        interval_weight: ``"none"`` (the paper) or ``"kim"``: Kim et al.'s short-to-long interval weight
            β(Δt, s) on the ``r != t`` rows (:mod:`~meanflow.methods.interval_weight`; needs progress).
        interval_power: ``k`` of its schedule ``s = 1 - (step / total)^k`` (1 is the paper's best).
    """

    ratio: float = 0.25
    time_dist: str = "logit_normal"
    t_mean: float = -0.4
    t_std: float = 1.0
    r_mean: float = -0.4
    r_std: float = 1.0
    time_pairing: str = "sort"
    norm_p: float = 1.0
    norm_eps: float = 0.01
    omega: float = 1.0
    kappa: float = 0.0
    t_start: float = 0.0
    t_end: float = 1.0
    class_dropout: float = 0.0
    num_classes: int = 0
    compile: bool = False
    jvp_precision: str = "float32"
    tangent: str = "v01"
    interval_weight: str = "none"
    interval_power: float = 1.0

    needs = _Needs()

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise UserError(f"ratio must be in [0, 1], got {self.ratio}")
        check_time_dist(self.time_dist, self.t_std)
        check_time_dist(self.time_dist, self.r_std)
        if self.time_pairing not in TIME_PAIRINGS:
            raise UserError(
                f"unknown time_pairing {self.time_pairing!r}; choose from {', '.join(TIME_PAIRINGS)}"
            )
        if self.norm_p < 0:
            raise UserError(f"norm_p must be >= 0, got {self.norm_p}")
        if not self.norm_eps > 0:
            raise UserError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not 0.0 <= self.kappa < 1.0:
            raise UserError(f"kappa must be in [0, 1), got {self.kappa}")
        if not self.omega > 0:
            raise UserError(f"omega must be > 0, got {self.omega}")
        if not 0.0 <= self.t_start <= self.t_end <= 1.0:
            raise UserError(
                f"need 0 <= t_start <= t_end <= 1, got t_start={self.t_start}, t_end={self.t_end}"
            )
        if not 0.0 <= self.class_dropout <= 1.0:
            raise UserError(f"class_dropout must be in [0, 1], got {self.class_dropout}")
        if int(self.num_classes) != self.num_classes or self.num_classes < 0:
            raise UserError(f"num_classes must be an integer >= 0, got {self.num_classes}")
        if not isinstance(self.compile, bool):
            raise UserError(f"compile must be true or false, got {self.compile!r}")
        check_jvp_precision(self.jvp_precision)
        if self.tangent not in TANGENTS:
            raise UserError(f"unknown tangent {self.tangent!r}; choose from {', '.join(TANGENTS)}")
        if self.num_classes == 0 and (self.guided or self.class_dropout > 0):
            raise UserError("guidance (omega != 1 or kappa != 0) and class_dropout need num_classes > 0")
        check_interval_weight(self.interval_weight, self.interval_power)

    def interval_beta(self, t: Tensor, r: Tensor, progress) -> Tensor | None:
        """Kim et al.'s per-row weight ``β [B]`` at ``progress`` (:mod:`~meanflow.methods.interval_weight`;
        1 where ``r = t``); None when ``interval_weight="none"``."""
        if self.interval_weight == "none":
            return None
        if progress is None:
            raise UserError("interval_weight='kim' needs the training progress (progress=Progress(step, "
                            "total))")
        lam = interval_lambda(time_dist=self.time_dist, t_mean=self.t_mean, t_std=self.t_std,
                              r_mean=self.r_mean, r_std=self.r_std, pairing=self.time_pairing)
        return kim_beta(t, r, progress.fraction, self.interval_power, lam)

    @property
    def guided(self) -> bool:
        """Whether the target includes trained-in guidance (ω != 1 or κ != 0)."""
        return self.omega != 1.0 or self.kappa != 0.0

    # ------------------------------------------------------------------ training

    def sample_t_r(self, n: int, device=None, generator: torch.Generator | None = None):
        """Draw ``(t, r)``, each ``[n]`` float32, ``r <= t`` (see :mod:`~meanflow.methods.time_sampling`)."""
        return sample_t_r(
            n, ratio=self.ratio, time_dist=self.time_dist, t_mean=self.t_mean, t_std=self.t_std,
            r_mean=self.r_mean, r_std=self.r_std, pairing=self.time_pairing, device=device,
            generator=generator,
        )

    @torch.no_grad()
    def guided_velocity(self, net: nn.Module, z: Tensor, t: Tensor, v: Tensor, y: Tensor,
                        net_kwargs: dict | None = None) -> Tensor:
        """Guided velocity ``v_g`` the target is built on (no gradient).

        With ``v_uncond = u(z, t, h=0, y=null)`` and ``v_cond = u(z, t, h=0, y)`` (instantaneous
        velocities predicted by the network itself)::

            v_g = ω v + (1 - ω - κ) v_uncond + κ v_cond    for t_start <= t <= t_end
            v_g = v                                        otherwise

        Args:
            net: The network being trained.
            z: Noisy input ``[B, *S]``.
            t: Time ``[B]``.
            v: Conditional velocity ``e - x``, ``[B, *S]``.
            y: Class ids ``[B]`` (before class dropout).
            net_kwargs: Extra keyword inputs of the network, passed to both forwards.

        Returns:
            ``v_g``, ``[B, *S]``.
        """
        kw = net_kwargs or {}
        zero = torch.zeros_like(t)
        null = torch.full_like(y, self.num_classes)
        v_g = self.omega * v
        if self.omega + self.kappa != 1.0:
            v_g = v_g + (1 - self.omega - self.kappa) * net(z, t, zero, null, **kw).to(v.dtype)
        if self.kappa != 0.0:
            v_g = v_g + self.kappa * net(z, t, zero, y, **kw).to(v.dtype)
        inside = (t >= self.t_start) & (t <= self.t_end)
        return torch.where(expand_like(inside, v), v_g, v)

    def target(
        self, net: nn.Module, z: Tensor, t: Tensor, r: Tensor, v: Tensor, y: Tensor | None = None,
        net_kwargs: dict | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Prediction and MeanFlow regression target at ``(z, r, t)`` for a velocity ``v``.

        ``u, du/dt = jvp(u_theta, (z, r, t), (v, 0, 1))`` and
        ``u_tgt = v - clip(t - r, 0, 1) * du/dt`` (detached). Runs as given (no dtype changes).

        Args:
            net: Network (possibly DDP-wrapped).
            z: ``[B, *S]``.
            t: ``[B]``.
            r: ``[B]``, ``r <= t``.
            v: Velocity used as the z-tangent and in the target (``v`` or guided ``v_g``), ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            net_kwargs: Extra keyword inputs of the network (no tangent).

        Returns:
            ``(u, u_tgt)``: prediction with graph and detached target, both ``[B, *S]``.
        """
        b = z.shape[0]
        order, rows = moving_rows(net, t, r)
        tangent = TANGENTS[self.tangent]
        if order is None:
            return jvp_target(net, z, t, r, v, y, net_kwargs, rows, tangent)
        u, u_tgt = jvp_target(net, *take_rows(order, b, z, t, r, v, y, net_kwargs), rows, tangent)
        back = torch.argsort(order)
        return u.index_select(0, back), u_tgt.index_select(0, back)

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
        progress=None,
    ) -> LossOutput:
        """MeanFlow loss on a batch (paper Algorithm 1, with trained-in guidance).

        ``err_i = ||u_i - u_tgt_i||^2`` summed over non-batch dims and
        ``loss = mean_i err_i / stopgrad((err_i + c)^p)``. The JVP and the loss run in float32 with
        autocast disabled, whatever the surrounding precision (float64 inputs stay float64); with
        ``jvp_precision="autocast"`` the JVP follows the surrounding autocast.

        Args:
            net: Network ``net(z, t, h, y)``, possibly DDP-wrapped.
            x: Data ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            noise: Optional fixed noise ``[B, *S]``.
            t: Optional fixed t ``[B]``. If only one of ``t``/``r`` is given the other equals it.
            r: Optional fixed r ``[B]``, ``r <= t``.
            net_kwargs: Extra keyword inputs passed unchanged to every network call (the primal,
                the JVP, the guidance forwards), e.g. ``{"augment_labels": [B, 9]}``.
            progress: Training progress (``interval_weight="kim"`` only).

        Returns:
            :class:`LossOutput` with metrics ``loss`` (weighted), ``mse`` (mean per-sample squared
            error, unweighted), ``u_v_mse`` (mean ``||u - v||^2``, monitoring only) and
            ``frac_r_neq_t``.
        """
        b = x.shape[0]
        check_override("noise", noise, tuple(x.shape))
        check_override("t", t, (b,))
        check_override("r", r, (b,))
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 in tests
        x = x.to(dtype)
        t, r = given_times(t, r, lambda: self.sample_t_r(b, device=x.device), x)
        e = torch.randn_like(x) if noise is None else noise.to(x.device, dtype)
        z, v = interpolate(x, e, t)

        v_g = v
        if y is not None and self.num_classes > 0:
            if self.guided:
                v_g = self.guided_velocity(net, z, t, v, y, net_kwargs).to(dtype)
            if self.class_dropout > 0:
                drop = torch.rand(b, device=x.device) < self.class_dropout
                y = torch.where(drop, torch.full_like(y, self.num_classes), y)
                v_g = torch.where(expand_like(drop, v), v, v_g)

        # The tangent is needed only where r != t (elsewhere t - r = 0 drops it from the target):
        # those rows go first and the network differentiates only them. The loss is a mean over
        # rows, so the order does not change it.
        order, rows = moving_rows(net, t, r)
        z, t, r, v, v_g, y, net_kwargs = take_rows(order, b, z, t, r, v, v_g, y, net_kwargs)
        beta = self.interval_beta(t, r, progress)
        run = compiled_objective() if self.compile else objective
        loss, err, u = run(net, z, t, r, v_g, y, self.norm_p, self.norm_eps, net_kwargs, rows,
                           self.jvp_precision == "autocast", TANGENTS[self.tangent], beta)

        with torch.no_grad():
            metrics = {
                "loss": loss.detach(),
                "mse": err.detach().mean(),
                "u_v_mse": per_sample_sq(u.detach() - v).mean(),
                "frac_r_neq_t": (r != t).float().mean(),
            }
        return LossOutput(loss=loss, metrics=metrics)

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
        """One- or few-step generation (paper Algorithm 2).

        One step: ``x = e - u(e, r=0, t=1)``. On a grid ``1 = t_0 > ... > t_k = 0``:
        ``z <- z - (t_i - t_{i+1}) u(z, r=t_{i+1}, t=t_i)``. Uses the plain forward of the network
        (fused attention, no tangents): one step costs one forward pass.

        Args:
            net: Network.
            noise: ``e ~ N(0, I)``, ``[B, *S]``.
            y: Class ids ``[B]`` or ``None`` (unconditional / null class).
            steps: Number of steps k >= 1.
            schedule: Optional decreasing grid ``[k + 1]`` from 1 to 0.
            net_kwargs: Extra keyword inputs passed unchanged to every network call.
            generator: Unused (the sampler is deterministic given the noise).

        Returns:
            Samples ``[B, *S]``.
        """
        kw = net_kwargs or {}
        grid = resolve_schedule(steps, schedule, noise.device).to(noise.dtype)
        z = noise
        b = noise.shape[0]
        for i in range(grid.numel() - 1):
            t_cur, t_next = grid[i], grid[i + 1]
            t = t_cur.expand(b)
            h = (t_cur - t_next).expand(b)
            z = z - (t_cur - t_next) * net(z, t, h, y, **kw)
        return z

