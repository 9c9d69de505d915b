"""SoFlow (arXiv 2512.15657): the solution map of the flow ODE, trained without a JVP.

The network parametrises the solution map from time t to an earlier time s <= t with Euler
coefficients,

    f(z_t, t, s) = z_t - (t - s) NN(z_t, t, s),     NN(z, t, s) = u(z, r = s, t) = net(z, t, t - s, y),

so NN is this project's average velocity and the sampler needs no conversion. (The official code
also has 'Trig' noising and coefficients, ``a = cos(π/2 (s - t))``, ``b = sin(π/2 (s - t))``; its
configs use Linear + Euler only, which is all this module implements.) Each batch is split by rows:

* **Flow matching** (the first ``floor(ratio_fm B)`` rows, ``t ~ LN(fm_mean, fm_std)``): with
  ``δ = NN(z_t, t, t | y') - ṽ``, per row ``sg(w) mean(δ²)``, ``w = 1 / (mean(δ²) + ε)^p``.
* **Solution consistency** (the other rows): ``t ~ LN(t_mean, t_std)`` clamped to >= 1e-4,
  ``s = min(LN(r_mean, r_std), t - 1e-4)``, the intermediate time ``l = min(t + (s - t) ρ, t - 1e-4)``
  with ρ on training progress (below), ``z_l = z_t + (l - t) ṽ`` and, without gradient and with
  the dropout masks of the first pass (its RNG state replayed),

      q = (f(z_t, t, s) - f(z_l, l, s)) / (t - l)                                      [B, *S]
        = ṽ - NN_l - (t - s) / (t - l) (NN_t - NN_l),     NN_t = NN(z_t, t, s), NN_l = NN(z_l, l, s),

  (the second line is the same quantity with the cancellation of ``z_t - z_l`` done by hand), the
  weight ``w = 1 / (mean(q²) + ε)^p`` and the official surrogate, per row,
  ``sgn(s - t) mean(NN_t sg(w q)) = -mean(NN_t sg(w q))``, whose gradient is that of
  ``sg(w) ρ' mean(q²) / 2``, ``ρ' = (t - l) / (t - s)`` (the official "stabler implementation of the MSE
  objective with same gradient (no division)"); its value is not a distance (the metric ``con_mse`` is
  ``mean(q²)``).

The loss is the mean of the per-row terms, i.e. each term weighted by its share of the batch.
Written as a target, ``q = -(NN_t - u_tgt) / ρ'`` with ``ρ' = (t - l) / (t - s)`` and
``u_tgt = ρ' ṽ + (1 - ρ') u_θ(z_l, s, l)``: α-Flow's discrete target with α = ρ' (derived here, not
stated by either paper).

**Guidance** (class-conditional batches only, ``cfg_scale > 1``): a label-dropout mask
``U < class_dropout`` sends labels to the null class ``num_classes`` (``y'``); with
``v_∅ = NN(z_t, t, t | ∅)`` and ``v_c = NN(z_t, t, t | y)`` from the online network without gradient,

    ṽ = m (v + d(t) (w - 1) (v - v_∅)) + (1 - m) v_c     (kept rows),   ṽ = v   (dropped rows),

``w = cfg_scale``, ``m = mix_ratio`` (in MeanFlow's terms ω = m w, κ = 1 - m where d = 1) and the decay
``d(t) = 1`` for ``t <= cfg_decay_time``, else ``1 - exp(-0.025 τ / (1 - τ))`` with
``τ = (1 - t) / (1 - cfg_decay_time)`` (so d(1) = 0 and d is C¹ at the decay time). On
unconditional data (no labels, or ``num_classes = 0``) the guidance options are inert and ṽ = v,
as in the official code (its CIFAR-10 runs pass no labels).

**ρ schedule** on ``f = step / total``: ``const`` ρ_end; ``linear`` ρ_0 + (ρ_end - ρ_0) f; ``cosine``
ρ_end + (ρ_0 - ρ_end) (1 + cos(π f)) / 2; ``exponent`` ρ_0 (ρ_end / ρ_0)^f.

**Sampling** (consistency-style, the official one): on ``1 = t_0 > ... > t_k = 0``,
``x̂ = f(z, t_i, 0) = z - t_i u(z, 0, t_i)``, then ``z <- (1 - t_{i+1}) x̂ + t_{i+1} ε`` with fresh ε;
``sampler="trajectory"`` chains ``z <- f(z, t_i, t_{i+1})`` instead (not in the official code).

Confirmed in ``zlab-princeton/SoFlow@3b60d60``:

* ``models.py:48-58`` Euler ``a = 1``, ``b = s - t``; ``:116-120`` ``f = a x_t + b NN(x_t, t, s)``;
  ``:110-114`` the velocity ``∂_s f|_{s=t} = NN(x_t, t, t)`` (FM term); ``dit.py:243-250`` and
  ``unet.py:312-319`` embed t and t - s (this project's (t, h)), ``y = None`` is the null class and
  the DiT's own label dropout is off (``y_embedder(y, False)``): the mask comes from the loss;
* ``models.py:122-158`` the FM term: guidance with the prediction's labels masked (l.132-140), the
  mix with the (detached) prediction, ``w = 1 / (|∂_s b| (mean δ² + eps)^p)`` with ``∂_s b = 1``
  (l.150-154);
* ``models.py:161-207`` the consistency term: guidance under no_grad, the conditional forward only
  when ``mix_ratio != 1`` (l.170-182), ``torch.cuda.get_rng_state()`` saved before ``NN_t`` and
  restored before ``NN_l`` (l.188-196; here the CPU state as well, for CPU dropout), ``x_l``,
  ``f_l``, ``q`` and ``w`` under no_grad (l.192-199), the surrogate
  ``sgn(b) mean(NN_t q w)`` "with same gradient (no division)" (l.201-203);
* ``models.py:209-215`` the decay d(t) with k = 0.025; ``:217-228`` the four ρ schedules;
* ``train.py:224-225`` the split ``int(ratio B)`` FM rows first; ``:236`` FM ``t``; ``:237-240``,
  ``:268-271`` the dropout mask drawn only when ``cfg_scale > 1``; ``:259-266`` the consistency
  draws and the 1e-4 gaps; ``:281`` the terms weighted by their fractions; ``:69-72`` guidance
  needs label dropout and label dropout needs guidance (checked here too);
* ``imagenet.yaml:9-20`` the defaults here (ratio .75, p 1, eps .01, LN means (-0.2, -1, 0.2) and
  stds (1, .8, .8) for (FM, s, t), cfg 3, mix .25, drop .1, decay .8, Exponent .1 -> .002);
* ``inference.py:61,78-88`` the sampler (grid ``1 - i / N``; jump to 0, re-noise to the next t).

As in the official code the two kinds of rows take separate forwards (the flow-matching rows', then the
consistency rows'). Differences: the network runs in float32 with autocast off whatever the training
precision (q divides a difference of two forwards by t - l >= 1e-4; the official code runs float32
with TF32 matmuls); ``net_kwargs`` (augmentation labels) go to every forward (the official FM
guidance forward omits them; guidance and augmentation never meet in its configs).
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
from meanflow.methods.consistency import rng_state, set_rng_state
from meanflow.methods.time_sampling import check_time_dist, sample_time

RHO_SCHEDULES = ("const", "linear", "cosine", "exponent")
SAMPLERS = ("consistency", "trajectory")
MIN_GAP = 1e-4
"""Smallest ``t`` and gaps ``t - s``, ``t - l`` of the consistency rows (official ``train.py:262-266``)."""
DECAY_K = 0.025
"""k of the guidance decay ``1 - exp(-k τ / (1 - τ))`` (official ``models.py:209``)."""


def rho_at(fraction: float, *, start: float = 0.1, end: float = 0.002, schedule: str = "exponent") -> float:
    """ρ at training progress ``fraction`` in [0, 1] (official ``get_middle_time``, ``models.py:217-228``)."""
    if schedule == "const":
        return end
    if schedule == "linear":
        return start + (end - start) * fraction
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))
    return start * (end / start) ** fraction


def cfg_decay(t: Tensor, decay_time: float) -> Tensor:
    """Guidance decay d(t) ``[B] -> [B]``: 1 for ``t <= decay_time``, then smoothly to 0 at t = 1
    (official ``get_cfg_decay_scale``); ones when ``decay_time >= 1``."""
    if decay_time >= 1.0:
        return torch.ones_like(t)
    tau = ((1 - t) / (1 - decay_time)).clamp(0.0, 1 - 1e-6)
    return torch.where(t <= decay_time, torch.ones_like(t), 1 - torch.exp(-DECAY_K * tau / (1 - tau)))


def _rows(sel, b: int, *items):
    """Each item cut to the rows ``sel`` (a slice or an index tensor) along its batch axis: tensors
    whose first size is ``b`` and dicts of them (``net_kwargs``); anything else unchanged."""

    def take(x):
        if isinstance(x, dict):
            return {k: take(v) for k, v in x.items()}
        if isinstance(x, Tensor) and x.dim() and x.shape[0] == b:
            return x[sel]
        return x

    return tuple(take(x) for x in items)


@dataclass
class SoFlow(Method):
    """SoFlow: flow matching plus solution consistency, no JVP; consistency-style sampling.

    Defaults are the official ImageNet-256 config (``imagenet.yaml``, DiT-B/4); the CIFAR-10 one is the
    preset ``cifar10-soflow``.

    Attributes:
        ratio_fm: Share of each batch in the flow-matching term (the first ``floor(ratio_fm B)`` rows).
        norm_p: Power p of both adaptive weights ``1 / (mean err + ε)^p`` (detached).
        norm_eps: ε of the adaptive weights.
        fm_mean, fm_std: Logit-normal of the flow-matching rows' t.
        t_mean, t_std: Logit-normal of the consistency rows' t (then clamped to >= 1e-4).
        r_mean, r_std: Logit-normal of the consistency rows' target time (SoFlow's s; this project's
            r), then ``min(., t - 1e-4)``.
        rho_start, rho_end: ρ_0 and ρ_end of the ρ schedule, in (0, 1].
        rho_schedule: ``"const"`` (ρ_end throughout), ``"linear"``, ``"cosine"`` or ``"exponent"``.
        cfg_scale: Training guidance scale w (1: none); needs ``class_dropout > 0``.
        mix_ratio: m, the share of the guided velocity in ṽ (the rest the conditional prediction).
        class_dropout: Probability of the null label (drawn only with guidance); needs ``cfg_scale > 1``.
        cfg_decay_time: Guidance decays for t above it (1: no decay).
        num_classes: Number of real classes (null id ``num_classes``); 0 = unconditional.
        sampler: k > 1 steps: ``"consistency"`` (jump to 0, re-noise; official) or ``"trajectory"``.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"progress"})

    ratio_fm: float = 0.75
    norm_p: float = 1.0
    norm_eps: float = 0.01
    fm_mean: float = -0.2
    fm_std: float = 1.0
    t_mean: float = 0.2
    t_std: float = 0.8
    r_mean: float = -1.0
    r_std: float = 0.8
    rho_start: float = 0.1
    rho_end: float = 0.002
    rho_schedule: str = "exponent"
    cfg_scale: float = 3.0
    mix_ratio: float = 0.25
    class_dropout: float = 0.1
    cfg_decay_time: float = 0.8
    num_classes: int = 0
    sampler: str = "consistency"

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.ratio_fm <= 1.0, f"ratio_fm must be in [0, 1], got {self.ratio_fm}"),
            (self.norm_p >= 0, f"norm_p must be >= 0, got {self.norm_p}"),
            (self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}"),
            (0.0 < self.rho_start <= 1.0 and 0.0 < self.rho_end <= 1.0,
             f"rho_start and rho_end must be in (0, 1], got {self.rho_start}, {self.rho_end}"),
            (self.rho_schedule in RHO_SCHEDULES,
             f"unknown rho_schedule {self.rho_schedule!r}; choose from {', '.join(RHO_SCHEDULES)}"),
            (self.cfg_scale >= 1.0, f"cfg_scale must be >= 1 (1: no guidance), got {self.cfg_scale}"),
            (0.0 <= self.mix_ratio <= 1.0, f"mix_ratio must be in [0, 1], got {self.mix_ratio}"),
            (0.0 <= self.class_dropout < 1.0, f"class_dropout must be in [0, 1), got {self.class_dropout}"),
            ((self.cfg_scale > 1.0) == (self.class_dropout > 0.0),
             f"cfg_scale > 1 and class_dropout > 0 go together (the official check), got cfg_scale="
             f"{self.cfg_scale}, class_dropout={self.class_dropout}"),
            (0.0 < self.cfg_decay_time <= 1.0,
             f"cfg_decay_time must be in (0, 1], got {self.cfg_decay_time}"),
            (int(self.num_classes) == self.num_classes and self.num_classes >= 0,
             f"num_classes must be an integer >= 0, got {self.num_classes}"),
            (self.sampler in SAMPLERS,
             f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        for std in (self.fm_std, self.t_std, self.r_std):
            check_time_dist("logit_normal", std)

    def rho(self, progress: Progress) -> float:
        """ρ at ``progress``."""
        return rho_at(progress.fraction, start=self.rho_start, end=self.rho_end, schedule=self.rho_schedule)

    # ------------------------------------------------------------------ training

    def sample_t_r(self, n: int, device=None) -> tuple[Tensor, Tensor]:
        """``(t, r)``, each ``[n]``: the first ``floor(ratio_fm n)`` rows ``r = t ~ LN(fm_mean, fm_std)``,
        the others ``t = max(LN(t_mean, t_std), 1e-4)``, ``r = min(LN(r_mean, r_std), t - 1e-4)``."""
        n_fm = int(self.ratio_fm * n)
        t_fm = sample_time(n_fm, "logit_normal", self.fm_mean, self.fm_std, device=device)
        s = sample_time(n - n_fm, "logit_normal", self.r_mean, self.r_std, device=device)
        t = sample_time(n - n_fm, "logit_normal", self.t_mean, self.t_std, device=device).clamp(min=MIN_GAP)
        return torch.cat([t_fm, t]), torch.cat([t_fm, torch.minimum(s, t - MIN_GAP)])

    def guided(self, y: Tensor | None) -> bool:
        """Whether a batch with labels ``y`` gets guidance and label dropout."""
        return y is not None and self.num_classes > 0 and self.cfg_scale > 1.0

    @torch.no_grad()
    def guided_velocity(self, net: nn.Module, z: Tensor, t: Tensor, v: Tensor, y: Tensor, drop: Tensor,
                        v_cond: Tensor | None = None, net_kwargs: dict | None = None) -> Tensor:
        """ṽ ``[B, *S]`` (no gradient): ``m (v + d(t) (w - 1) (v - v_∅)) + (1 - m) v_c`` on kept rows,
        ``v`` on dropped rows (``drop [B]``). ``v_c = NN(z, t, t | y)`` is computed unless given (or
        unless ``m = 1``)."""
        kw = net_kwargs or {}
        zero = torch.zeros_like(t)
        v_null = net(z, t, zero, torch.full_like(y, self.num_classes), **kw).to(v.dtype)
        v_g = v + expand_like(cfg_decay(t, self.cfg_decay_time), v) * (self.cfg_scale - 1) * (v - v_null)
        if self.mix_ratio != 1.0:
            if v_cond is None:
                v_cond = net(z, t, zero, y, **kw)
            v_g = self.mix_ratio * v_g + (1 - self.mix_ratio) * v_cond.detach().to(v.dtype)
        return torch.where(expand_like(drop, v), v, v_g)

    def fm_term(self, net: nn.Module, z: Tensor, t: Tensor, v: Tensor, y: Tensor | None, y_in: Tensor | None,
                drop: Tensor | None, net_kwargs: dict | None = None) -> tuple[Tensor, Tensor]:
        """Flow-matching rows: per-row ``sg(w) mean(δ²)`` (graph) and ``mean(δ²)`` (detached), each ``[n]``.

        ``δ = NN(z, t, t | y_in) - ṽ``; ``y_in`` are the labels after dropout, ``y`` before.
        """
        u = net(z, t, torch.zeros_like(t), y_in, **(net_kwargs or {})).to(z.dtype)
        target = v
        if drop is not None:
            target = self.guided_velocity(net, z, t, v, y, drop, v_cond=u, net_kwargs=net_kwargs)
        err = (u - target).square().flatten(1).mean(dim=1)
        w = 1.0 / (err.detach() + self.norm_eps).pow(self.norm_p)
        return w * err, err.detach()

    def consistency_term(self, net: nn.Module, z: Tensor, t: Tensor, s: Tensor, rho: float, v: Tensor,
                         y: Tensor | None, y_in: Tensor | None, drop: Tensor | None,
                         net_kwargs: dict | None = None) -> tuple[Tensor, Tensor]:
        """Consistency rows: per-row surrogate ``-mean(NN_t sg(w q))`` (graph) and ``mean(q²)`` (detached),
        each ``[n]``; ``t``, ``s``: ``[n]`` with ``s <= t - 1e-4``.

        ``l = min(t + (s - t) ρ, t - 1e-4)``, ``z_l = z + (l - t) ṽ``; ``NN_l`` replays the RNG state
        ``NN_t`` started from (same dropout masks).
        """
        kw = net_kwargs or {}
        v_t = v
        if drop is not None:
            v_t = self.guided_velocity(net, z, t, v, y, drop, net_kwargs=net_kwargs)
        l = torch.minimum(t + (s - t) * rho, t - MIN_GAP)  # noqa: E741 (the paper's name)
        state = rng_state(z.device)
        nn_t = net(z, t, t - s, y_in, **kw).to(z.dtype)
        with torch.no_grad():
            z_l = z + expand_like(l - t, z) * v_t
            set_rng_state(state, z.device)
            nn_l = net(z_l, l, l - s, y_in, **kw).to(z.dtype)
            q = v_t - nn_l - expand_like((t - s) / (t - l), z) * (nn_t.detach() - nn_l)
            q2 = q.square().flatten(1).mean(dim=1)
            w = 1.0 / (q2 + self.norm_eps).pow(self.norm_p)
        surrogate = -(nn_t * (expand_like(w, q) * q)).flatten(1).mean(dim=1)
        return surrogate, q2

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
        """SoFlow loss on a batch ``x [B, *S]`` at training ``progress`` (required: it sets ρ).

        Rows with ``r = t`` are flow-matching rows, rows with ``r < t`` consistency rows with target
        time ``s = r`` (overrides: ``t - r >= 1e-4`` there). With guidance one ``torch.rand(B)`` draws
        the label-dropout mask of the whole batch. Costs, per row: flow matching 1 forward with graph
        (+ 1 no-grad with guidance); consistency 1 with graph + 1 no-grad (+ 1 or 2 with guidance).

        Returns:
            :class:`LossOutput`; metrics ``loss``, ``fm_mse`` (mean δ²), ``con_mse`` (mean q²), ``rho``,
            ``frac_fm``.
        """
        if progress is None:
            raise UserError("soflow needs the training progress (progress=Progress(step, total))")
        b = x.shape[0]
        for name, value in (("noise", noise), ("t", t), ("r", r)):
            check_override(name, value, tuple(x.shape) if name == "noise" else (b,))
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        if t is None and r is None:  # drawn: the row split is known on the host
            t, r = given_times(None, None, lambda: self.sample_t_r(b, device=x.device), x)
            n_fm = int(self.ratio_fm * b)
            fm_sel, con_sel, n_con = slice(0, n_fm), slice(n_fm, b), b - n_fm
        else:
            t, r = given_times(t, r, None, x)
            fm = r == t
            if bool((~fm & (t - r < MIN_GAP * (1 - 1e-6))).any()):
                raise UserError(f"soflow: rows with r < t need t - r >= {MIN_GAP}")
            fm_sel, con_sel = fm.nonzero().squeeze(1), (~fm).nonzero().squeeze(1)
            n_fm, n_con = fm_sel.numel(), con_sel.numel()
        e = torch.randn_like(x) if noise is None else noise.to(x.device, dtype)
        z, v = interpolate(x, e, t)
        drop, y_in = None, y
        if self.guided(y):
            drop = torch.rand(b, device=x.device) < self.class_dropout
            y_in = torch.where(drop, torch.full_like(y, self.num_classes), y)
        rho = self.rho(progress)
        zero = x.new_zeros(())
        total, fm_mse, con_mse = zero, zero, zero
        with torch.autocast(device_type=x.device.type, enabled=False):
            if n_fm > 0:
                zf, tf, vf, yf, yif, df, kwf = _rows(fm_sel, b, z, t, v, y, y_in, drop, net_kwargs)
                per_row, err = self.fm_term(net, zf, tf, vf, yf, yif, df, kwf)
                total, fm_mse = total + per_row.sum(), err.mean()
            if n_con > 0:
                zc, tc, rc, vc, yc, yic, dc, kwc = _rows(con_sel, b, z, t, r, v, y, y_in, drop, net_kwargs)
                per_row, q2 = self.consistency_term(net, zc, tc, rc, rho, vc, yc, yic, dc, kwc)
                total, con_mse = total + per_row.sum(), q2.mean()
        loss = total / b
        metrics = {"loss": loss.detach(), "fm_mse": fm_mse, "con_mse": con_mse, "rho": torch.tensor(rho),
                   "frac_fm": torch.tensor(n_fm / b)}
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
        """k-step generation on ``1 = t_0 > ... > t_k = 0`` (uniform unless ``schedule``), ``[B, *S]``.

        ``consistency`` (official ``inference.py:78-88``): ``x̂ = z - t_i u(z, 0, t_i)``, then
        ``z <- (1 - t_{i+1}) x̂ + t_{i+1} ε`` with ε from :func:`~meanflow.methods.base.fresh_noise`
        (``generator``). ``trajectory``: ``z <- z - (t_i - t_{i+1}) u(z, t_{i+1}, t_i)``. One step is
        ``e - u(e, 0, 1)`` either way.
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
            z = (1 - t_next) * x_hat + t_next * fresh_noise(x_hat, generator) if float(t_next) > 0 else x_hat
        return z
