"""Improved MeanFlow (iMF; Geng, Lu, Wu, Shechtman, Kolter, He, arXiv 2512.02012).

The network still models the average velocity ``u(z_t, r, t)`` (called ``net(z, t, h = t - r, y)``),
but the loss is written in velocity space. From the MeanFlow identity the *compound velocity*

    V = u(z_t, r, t) + (t - r) * sg(du/dt),   du/dt = v_hat . d_z u + d_t u   (tangent (v_hat, 0, 1)
                                                                           on (z, r, t))

equals the instantaneous velocity, so it is regressed onto ``sg(v_g)``, a target that no longer
contains the network's own derivative. Two further changes from MeanFlow:

* the JVP tangent is the model's own predicted (marginal, guided) velocity ``v_hat`` instead of the
  single-sample conditional velocity ``e - x``;
* guidance is a network *input*: each sample draws a guidance scale ``w`` and an interval
  ``[t_min, t_max]`` and the network receives ``guidance = [w, t_min, t_max]`` (``[B, 3]``, keyword
  input ``guidance``), so the user picks ``w`` and the interval at sampling time, still 1 NFE.

Per sample, with ``v = e - x``, ``v_theta(z, t | y, w, a, b) := u_theta(z, t, h = 0 | y, w, a, b)``:

    w_eff = w if t_min <= t <= t_max else 1
    v_c   = sg(v_theta(z, t | y,    w_eff, 0, 1))      # guided velocity, also the JVP tangent
    v_u   = sg(v_theta(z, t | null, 1,     0, 1))      # unconditional velocity
    v_g   = v + (1 - 1/w_eff) (v_c - v_u)              # CFG target built on the sample's v
    labels dropped with prob. p_drop -> null class and v_g = v
    u, du/dt = jvp(u_theta(. | y', w, t_min, t_max), (z, r, t), (v_c, 0, 1))
    L_u   = ||u + (t - r) sg(du/dt) - sg(v_g)||^2 / sg((||.||^2 + c)^p)
    L_v   = ||v_theta(z, t | y', w, t_min, t_max) - sg(v_g)||^2 / sg((||.||^2 + c)^p)
    loss  = mean_i (L_u + lambda_v L_v)

(``v_g`` follows from CFG ``v_c = w v_cls + (1 - w) v_u``: replacing the unknown class velocity
``v_cls = v_u + (v_c - v_u) / w`` by its one-sample estimate ``v`` gives the formula above.)

Constants and their sources. The paper's full text could not be retrieved here (only its abstract and
third-party summaries), so every constant below is taken from the authors' official code,
``github.com/Lyy-iiis/imeanflow`` (``imf.py``, ``configs/default.py``, ``configs/train_config.yml``,
``configs/eval_config.yml``, ``models/imfDiT.py``; the README names it the official implementation):

===========================  ==================================  ======================================
quantity                     value                               source
===========================  ==================================  ======================================
share of r = t               50% (``ratio = 0.5`` here)          ``data_proportion = 0.5`` (SPEC §3 too)
t, r distribution            two logit-normal(-0.4, 1.0) draws,  ``P_mean``, ``P_std``, ``sample_tr``
                             sorted
guidance scale w             density ~ w^-beta on [1, 1 + s_max] ``sample_cfg_scale``: ``s_max = 7.0``,
                             beta = 1 (log-uniform), w <= 8      ``cfg_beta = 1.0``
guidance interval            t_min ~ U(0, 0.5), t_max ~ U(0.5, 1) ``sample_cfg_interval``
interval for r = t samples   [0, 1] (always guided)              ``sample_cfg_interval`` (``fm_mask``)
velocity queries for v_g     h = 0, interval [0, 1]; v_u at w=1  ``v_cond_fn``, ``v_fn``
guided target                v + (1 - 1/w_eff)(v_c - v_u)        ``guidance_fn``
JVP tangent                  v_c with the *undropped* label      ``forward`` (``jax.jvp(.., v_c ..)``)
class dropout                0.1                                 ``class_dropout_prob``
adaptive weight              p = 1.0, c = 0.01, on both losses   ``norm_p``, ``norm_eps``, ``adp_wt_fn``
loss weights                 L_u + L_v (1 : 1)                   ``loss = loss_u + loss_v``
w input to the network       as 1 - 1/w                          ``omega_embedder(1 - 1 / w)``
sampling (ImageNet B/2)      w = 8.0, interval [0.4, 0.65]       ``configs/eval_config.yml``
===========================  ==================================  ======================================

Ambiguities, and the option picked: (1) the released eval config samples iMF-M/L/2 at w = 10.5,
above the training range [1, 8] of the released training config, so those models' training range is
not public; the default here is the released one (``omega_max = 8``). (2) The default sampling
guidance here is none (``sample_omega = 1``, interval [0, 1]), a neutral library default, not the
ImageNet setting above. (3) The official v-head sees the sample's own ``h`` during training; the
``h = 0`` reading below makes that input 0 by construction.

Our choice (documented, not from the paper): the official network has a separate auxiliary v-head
(its last 8 blocks duplicated, dropped at inference). Networks here keep one output, so the
instantaneous velocity is the same network at ``h = 0`` (``r = t``), where ``u(z, t, t) = v(z, t)``
by definition (MeanFlow already reads its guidance velocities this way). Consequences: the aux loss
costs one extra forward/backward (computed in the same network call as the JVP, as a ``2B`` batch,
so a DDP wrapper sees one forward per step), and on the r = t half of the batch ``L_v`` equals
``L_u`` (V = u there), so those samples get weight ``1 + lambda_v``. Unconditional training
(``num_classes = 0``) has no guidance: ``v_g = v``, the tangent is ``sg(v_theta(z, t))`` and the
network gets no guidance input.
"""

from __future__ import annotations

import contextlib
import math
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
from meanflow.methods.imf_guidance import GUIDANCE_KEY, draw_interval, draw_omega, guided_target
from meanflow.methods.imf_objective import forward_pair, weighted_errors
from meanflow.methods.jvp import caller_autocast, check_jvp_precision, moving_rows, pad_rows, take_rows
from meanflow.methods.time_sampling import check_time_dist, sample_t_r


@dataclass
class ImprovedMeanFlow(Method):
    """Improved MeanFlow (iMF): velocity-space MeanFlow loss, guidance scale/interval as inputs.

    Defaults are the official ImageNet-256 settings (see the module docstring for sources). A
    class-conditional model (``num_classes > 0``) needs a network that takes the ``guidance``
    keyword input (``mlp`` or ``unet`` with ``guidance_cond=True``, which ``meanflow train`` sets
    itself from :attr:`net_inputs`).

    Attributes:
        ratio: Fraction of each batch with ``r != t`` (the rest have ``r = t``).
        time_dist: ``"logit_normal"`` or ``"uniform"`` for both time draws (sorted into ``r <= t``).
        t_mean: Logit-normal mean of the time draws.
        t_std: Logit-normal std of the time draws.
        norm_p: Power p of the adaptive weight ``1 / sg((err + c)^p)`` (both losses).
        norm_eps: Constant c of the adaptive weight.
        v_weight: Weight lambda_v of the auxiliary instantaneous-velocity loss (0 skips it and its
            forward pass).
        omega_max: Largest training guidance scale; ``w`` is drawn on ``[1, omega_max]``.
        omega_beta: Exponent beta of the ``w`` density ``~ w^-beta`` (1: log-uniform).
        interval_split: ``t_min ~ U(0, s)``, ``t_max ~ U(s, 1)`` for ``r != t`` samples.
        class_dropout: Probability of replacing a label by the null class (and ``v_g`` by ``v``);
            ignored when unconditional.
        num_classes: Number of real classes (null class id = ``num_classes``); 0 = unconditional.
        sample_omega: Guidance scale used by :meth:`sample` unless given there.
        sample_t_min: Start of the guidance interval used by :meth:`sample` unless given there.
        sample_t_max: End of that interval.
        jvp_precision: ``"float32"`` (official): the whole loss, the JVP call included, runs in
            float32 with autocast off. ``"autocast"``: the JVP call follows the surrounding autocast
            (bf16 on GPUs); guidance forwards, targets and losses stay float32. Not published.
    """

    ratio: float = 0.5
    time_dist: str = "logit_normal"
    t_mean: float = -0.4
    t_std: float = 1.0
    norm_p: float = 1.0
    norm_eps: float = 0.01
    v_weight: float = 1.0
    omega_max: float = 8.0
    omega_beta: float = 1.0
    interval_split: float = 0.5
    class_dropout: float = 0.1
    num_classes: int = 0
    sample_omega: float = 1.0
    sample_t_min: float = 0.0
    sample_t_max: float = 1.0
    jvp_precision: str = "float32"

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise UserError(f"ratio must be in [0, 1], got {self.ratio}")
        check_time_dist(self.time_dist, self.t_std)
        if self.norm_p < 0:
            raise UserError(f"norm_p must be >= 0, got {self.norm_p}")
        if not self.norm_eps > 0:
            raise UserError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not self.v_weight >= 0:
            raise UserError(f"v_weight must be >= 0, got {self.v_weight}")
        if not 1.0 <= self.omega_max < math.inf:
            raise UserError(f"omega_max must be a finite number >= 1, got {self.omega_max}")
        if not math.isfinite(self.omega_beta):
            raise UserError(f"omega_beta must be finite, got {self.omega_beta}")
        if not 0.0 <= self.interval_split <= 1.0:
            raise UserError(f"interval_split must be in [0, 1], got {self.interval_split}")
        if not 0.0 <= self.class_dropout <= 1.0:
            raise UserError(f"class_dropout must be in [0, 1], got {self.class_dropout}")
        if int(self.num_classes) != self.num_classes or self.num_classes < 0:
            raise UserError(f"num_classes must be an integer >= 0, got {self.num_classes}")
        self._check_sampling_guidance(self.sample_omega, self.sample_t_min, self.sample_t_max)
        check_jvp_precision(self.jvp_precision)

    def _check_sampling_guidance(self, omega: float, t_min: float, t_max: float) -> None:
        if not 1.0 <= omega < math.inf:
            raise UserError(f"sampling guidance scale omega must be a finite number >= 1, got {omega}")
        if not 0.0 <= t_min <= t_max <= 1.0:
            raise UserError(f"sampling guidance interval must satisfy 0 <= t_min <= t_max <= 1, "
                            f"got [{t_min}, {t_max}]")
        if self.num_classes == 0 and omega != 1.0:
            raise UserError(f"guidance scale omega={omega} needs a class-conditional model (num_classes > 0)")

    @property
    def conditional(self) -> bool:
        """Whether the model is class-conditional, hence takes the ``guidance`` input."""
        return self.num_classes > 0

    @property
    def net_inputs(self) -> tuple[str, ...]:
        """``("guidance",)`` when class-conditional (the network then takes ``guidance=[B, 3]``; the
        builder sets e.g. ``guidance_cond=True`` on it), else ``()``."""
        return (GUIDANCE_KEY,) if self.conditional else ()

    # ------------------------------------------------------------------ training draws

    def sample_omega_train(self, n: int, *, device=None, dtype=torch.float32,
                           generator: torch.Generator | None = None) -> Tensor:
        """Training guidance scales ``[n]``, density ``~ w^-omega_beta`` on ``[1, omega_max]``
        (:func:`~meanflow.methods.imf_guidance.draw_omega`)."""
        return draw_omega(n, self.omega_max, self.omega_beta, device=device, dtype=dtype, generator=generator)

    def sample_interval_train(self, fm: Tensor, *, dtype=torch.float32,
                              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Training guidance intervals ``(t_min, t_max)``, each ``[n]``: ``t_min ~ U(0, s)``, ``t_max ~
        U(s, 1)`` with ``s = interval_split``, ``[0, 1]`` where the r = t mask ``fm [n]`` is set."""
        return draw_interval(fm, self.interval_split, dtype=dtype, generator=generator)

    # ------------------------------------------------------------------ training

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
        omega: Tensor | None = None,
        interval: tuple[Tensor, Tensor] | None = None,
        drop: Tensor | None = None,
    ) -> LossOutput:
        """iMF loss on a batch (see the module docstring for the formulas).

        Runs in float32 with autocast disabled (float64 inputs stay float64), like MeanFlow's loss.

        Args:
            net: Network ``net(z, t, h, y, **net_kwargs)``, possibly DDP-wrapped; class-conditional
                models also receive ``guidance=[B, 3]``.
            x: Data ``[B, *S]``.
            y: Class ids ``[B]``; required when ``num_classes > 0``, ignored otherwise.
            noise: Optional fixed noise ``[B, *S]``.
            t: Optional fixed t ``[B]``. If only one of ``t``/``r`` is given the other equals it.
            r: Optional fixed r ``[B]``, ``r <= t``.
            net_kwargs: Extra keyword inputs passed to every network call (must not hold
                ``guidance``; the method sets it).
            omega: Optional fixed training guidance scales ``[B]`` (tests).
            interval: Optional fixed ``(t_min [B], t_max [B])`` (tests).
            drop: Optional fixed boolean label-dropout mask ``[B]`` (tests).

        Returns:
            :class:`LossOutput` with metrics ``loss`` (weighted total), ``loss_u`` and ``loss_v``
            (mean unweighted per-sample squared errors of V and of the velocity), ``u_v_mse`` (mean
            ``||u - v||^2``, monitoring) and ``frac_r_neq_t``.
        """
        b = x.shape[0]
        check_override("noise", noise, tuple(x.shape))
        check_override("t", t, (b,))
        check_override("r", r, (b,))
        check_override("omega", omega, (b,))
        check_override("drop", drop, (b,))
        kw = dict(net_kwargs or {})
        if GUIDANCE_KEY in kw:
            raise UserError(f"net_kwargs must not contain {GUIDANCE_KEY!r}: imf sets it itself")
        if self.conditional and y is None:
            raise UserError("imf with num_classes > 0 needs class labels y")
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 in tests
        x = x.to(dtype)
        t, r = given_times(t, r, lambda: sample_t_r(b, ratio=self.ratio, time_dist=self.time_dist,
                                                    t_mean=self.t_mean, t_std=self.t_std, pairing="sort",
                                                    device=x.device), x)
        e = torch.randn_like(x) if noise is None else noise.to(x.device, dtype)
        z, v = interpolate(x, e, t)
        h = t - r
        jvp_context = (caller_autocast(x.device.type) if self.jvp_precision == "autocast"
                       else contextlib.nullcontext())

        with torch.autocast(device_type=x.device.type, enabled=False):
            y_in, v_g, v_c, kw_in = self._loss_inputs(net, z, t, r, v, y, kw, dtype, omega, interval, drop)
            # du/dt matters only where r != t (h = 0 elsewhere): those rows go first and only they
            # are differentiated; every loss term is a mean over rows, so the order is free.
            order, rows = moving_rows(net, t, r)
            z, t, r, h, y_in, v_c, v_g, v, kw_in = take_rows(order, b, z, t, r, h, y_in, v_c, v_g, v, kw_in)
            with jvp_context:
                u, dudt, v_pred = self._forward_pair(net, z, t, h, y_in, v_c, kw_in, rows)
            loss, err_u, err_v = weighted_errors(u, pad_rows(dudt, b), v_pred, h, v_g, self.norm_p,
                                                 self.norm_eps, self.v_weight)

        with torch.no_grad():
            metrics = {"loss": loss.detach(), "loss_u": err_u.detach().mean(),
                       "u_v_mse": per_sample_sq(u.detach() - v).mean(),
                       "frac_r_neq_t": (r != t).float().mean()}
            if err_v is not None:
                metrics["loss_v"] = err_v.detach().mean()
        return LossOutput(loss=loss, metrics=metrics)

    def _loss_inputs(self, net: nn.Module, z: Tensor, t: Tensor, r: Tensor, v: Tensor, y: Tensor | None,
                     kw: dict, dtype: torch.dtype, omega: Tensor | None,
                     interval: tuple[Tensor, Tensor] | None,
                     drop: Tensor | None) -> tuple[Tensor | None, Tensor, Tensor, dict]:
        """``(y_in [B], v_g [B, *S], v_c [B, *S], kw_in)``: the labels and keyword inputs the network
        is trained with, the target velocity and the JVP tangent. Unconditional: ``v_g = v``, ``v_c =
        sg(v_theta(z, t))``; class-conditional: :meth:`_guided_inputs`."""
        if self.conditional:
            return self._guided_inputs(net, z, t, r, v, y, kw, dtype, omega, interval, drop)
        with torch.no_grad():
            v_c = net(z, t, torch.zeros_like(t), y, **kw).to(dtype)
        return y, v, v_c, kw

    def _guided_inputs(self, net: nn.Module, z: Tensor, t: Tensor, r: Tensor, v: Tensor, y: Tensor, kw: dict,
                       dtype: torch.dtype, omega: Tensor | None, interval: tuple[Tensor, Tensor] | None,
                       drop: Tensor | None) -> tuple[Tensor, Tensor, Tensor, dict]:
        """The class-conditional inputs and target: ``(y_in [B], v_g [B, *S], v_c [B, *S], kw_in)``.

        Draws (unless given) ``w [B]`` and ``[t_min, t_max]`` (each ``[B]``), builds ``(v_g, v_c)`` by
        :func:`~meanflow.methods.imf_guidance.guided_target`, then drops labels with probability
        ``class_dropout`` (``y_in`` = null class and ``v_g = v`` there); ``kw_in`` adds the guidance
        input ``[w, t_min, t_max]`` ``[B, 3]`` to ``kw``.
        """
        b, device = t.shape[0], z.device
        if omega is None:
            omega = self.sample_omega_train(b, device=device, dtype=dtype)
        if interval is None:
            interval = self.sample_interval_train(r == t, dtype=dtype)
        else:
            check_override("interval[0]", interval[0], (b,))
            check_override("interval[1]", interval[1], (b,))
        omega = omega.to(device, dtype)
        t_min, t_max = (a.to(device, dtype) for a in interval)
        v_g, v_c = self._guided_target(net, z, t, v, y, omega, t_min, t_max, kw)
        if drop is None:
            drop = torch.rand(b, device=device) < self.class_dropout
        drop = drop.to(device)
        y_in = torch.where(drop, torch.full_like(y, self.num_classes), y)
        v_g = torch.where(expand_like(drop, v), v, v_g)
        return y_in, v_g, v_c, {**kw, GUIDANCE_KEY: torch.stack([omega, t_min, t_max], dim=1)}

    def _guided_target(self, net: nn.Module, z: Tensor, t: Tensor, v: Tensor, y: Tensor, omega: Tensor,
                       t_min: Tensor, t_max: Tensor, kw: dict) -> tuple[Tensor, Tensor]:
        """``(v_g, v_c)`` ``[B, *S]``, no gradient (:func:`~meanflow.methods.imf_guidance.guided_target`
        with this model's null class); subclasses (pmf) call it too."""
        return guided_target(net, z, t, v, y, omega, t_min, t_max, kw, self.num_classes)

    def _forward_pair(self, net: nn.Module, z: Tensor, t: Tensor, h: Tensor, y: Tensor | None, v_c: Tensor,
                      kw: dict, rows: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(u, du/dt, v_pred)`` from one network call (:func:`~meanflow.methods.imf_objective.forward_pair`;
        ``v_pred`` only when ``v_weight > 0``); subclasses (pmf) call it too."""
        return forward_pair(net, z, t, h, y, v_c, kw, rows, self.v_weight != 0)

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
        omega: float | None = None,
        interval: tuple[float, float] | None = None,
    ) -> Tensor:
        """One- or few-step generation with guidance chosen now (1 NFE per step).

        On a grid ``1 = t_0 > ... > t_k = 0``: ``z <- z - (t_i - t_{i+1}) u(z, t_i, h = t_i - t_{i+1} |
        y, w, t_min, t_max)``; one step is ``x = e - u(e, t=1, h=1 | ...)``.

        Args:
            net: Network.
            noise: ``e ~ N(0, I)``, ``[B, *S]``.
            y: Class ids ``[B]`` or ``None`` (null class).
            steps: Number of steps k >= 1.
            schedule: Optional decreasing grid ``[k + 1]`` from 1 to 0.
            net_kwargs: Extra keyword inputs passed unchanged to every network call.
            generator: Unused (deterministic given the noise).
            omega: Guidance scale ``w >= 1`` (default :attr:`sample_omega`); class-conditional only.
            interval: ``(t_min, t_max)`` (default ``(sample_t_min, sample_t_max)``).

        Returns:
            Samples ``[B, *S]``.
        """
        w = self.sample_omega if omega is None else float(omega)
        t_min, t_max = (self.sample_t_min, self.sample_t_max) if interval is None else map(float, interval)
        self._check_sampling_guidance(w, t_min, t_max)
        kw = dict(net_kwargs or {})
        b = noise.shape[0]
        if self.conditional:
            if GUIDANCE_KEY in kw:
                raise UserError(f"net_kwargs must not contain {GUIDANCE_KEY!r}: imf sets it itself")
            kw[GUIDANCE_KEY] = torch.tensor([w, t_min, t_max], dtype=noise.dtype,
                                            device=noise.device).expand(b, 3)
        grid = resolve_schedule(steps, schedule, noise.device).to(noise.dtype)
        z = noise
        for i in range(grid.numel() - 1):
            t_cur, t_next = grid[i], grid[i + 1]
            z = z - (t_cur - t_next) * net(z, t_cur.expand(b), (t_cur - t_next).expand(b), y, **kw)
        return z

