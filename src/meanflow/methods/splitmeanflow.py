"""SplitMeanFlow (arXiv 2507.16884): MeanFlow's average velocity trained by interval splitting, no JVP.

The average velocity ``u(z_t, r, t)`` over ``[r, t]`` is additive over a split of the interval at any
``s`` in ``[r, t]``:

    (t - r) u(z_t, r, t) = (s - r) u(z_s, r, s) + (t - s) u(z_t, s, t),     z_s = z_t - (t - s) u(z_t, s, t).

With ``λ ~ U(0, 1)`` and ``s = (1 - λ) t + λ r`` (so ``s - r = (1 - λ)(t - r)``, ``t - s = λ (t - r)``),
dividing by ``t - r`` gives the regression target of the rows with ``r < t``:

    u2 = u_θ(z_t, s, t),   z_s = z_t - (t - s) u2,   u_tgt = (1 - λ) u_θ(z_s, r, s) + λ u2,

the whole target under stop-gradient (the paper's sg[.]; here two forwards without gradient). Rows with
``r = t`` (the boundary condition ``u(z, t, t) = v``) regress ``v = e - x`` (flow matching). Loss per
row ``err = ||u_θ(z_t, r, t) - u_tgt||²`` (summed over the non-batch dims, as MeanFlow), weighted
``err / sg(err + c)^p``; p = 0 (plain L2, the paper's loss) by default, p = 1 is MeanFlow's weight.

As λ -> 0 (s -> t), ``u_tgt = u + λ (v_θ - (t - r) du/dt - u) + O(λ²)`` with ``v_θ = u_θ(z_t, t, t)``
and ``du/dt`` along ``(v_θ, 0, 1)`` on ``(z, r, t)``: the target's direction is MeanFlow's identity
``v - (t - r) du/dt`` with the model's own velocity in place of ``v`` (as iMF's tangent); with ``v`` in
place of ``u2`` this is α-Flow's discrete target with α = λ.

(t, r) are drawn as MeanFlow's (:func:`~meanflow.methods.time_sampling.sample_t_r`: ``ratio`` of the
rows with ``r != t``). The paper gives no ratio and no time distribution for its (speech) models and
releases no code: the defaults (25% r != t, LN(-0.4, 1) sorted pairs) are MeanFlow's, not SplitMeanFlow's
(unconfirmed). The paper's target passes say nothing of dropout; here they draw their own masks.

Sampling (MeanFlow's): ``z <- z - (t_i - t_{i+1}) u(z, t_{i+1}, t_i)`` on ``1 = t_0 > ... > t_k = 0``.
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
from meanflow.methods.time_sampling import TIME_PAIRINGS, check_time_dist, sample_t_r


@dataclass
class SplitMeanFlow(Method):
    """SplitMeanFlow: the interval-splitting identity as a target (no JVP); MeanFlow's sampler.

    Attributes:
        ratio: Fraction of each batch with ``r != t`` (the rest flow matching); 0.25 as MeanFlow
            (the paper states none).
        time_dist, t_mean, t_std, r_mean, r_std, time_pairing: The (t, r) draw, as MeanFlow's options.
        norm_p: Power p of the adaptive weight ``1 / sg(err + c)^p``; 0 (the paper: plain L2).
        norm_eps: Its constant c.
        class_dropout: Probability of replacing a label by the null class (for conditional data).
        num_classes: Number of real classes; the null class id is ``num_classes``. 0 = unconditional.
    """

    ratio: float = 0.25
    time_dist: str = "logit_normal"
    t_mean: float = -0.4
    t_std: float = 1.0
    r_mean: float = -0.4
    r_std: float = 1.0
    time_pairing: str = "sort"
    norm_p: float = 0.0
    norm_eps: float = 0.01
    class_dropout: float = 0.0
    num_classes: int = 0

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.ratio <= 1.0, f"ratio must be in [0, 1], got {self.ratio}"),
            (self.time_pairing in TIME_PAIRINGS,
             f"unknown time_pairing {self.time_pairing!r}; choose from {', '.join(TIME_PAIRINGS)}"),
            (self.norm_p >= 0, f"norm_p must be >= 0, got {self.norm_p}"),
            (self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}"),
            (0.0 <= self.class_dropout <= 1.0, f"class_dropout must be in [0, 1], got {self.class_dropout}"),
            (int(self.num_classes) == self.num_classes and self.num_classes >= 0,
             f"num_classes must be an integer >= 0, got {self.num_classes}"),
            (self.num_classes > 0 or self.class_dropout == 0.0, "class_dropout needs num_classes > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        check_time_dist(self.time_dist, self.t_std)
        check_time_dist(self.time_dist, self.r_std)

    def sample_t_r(self, n: int, device=None) -> tuple[Tensor, Tensor]:
        """``(t, r)``, each ``[n]`` float32, ``r <= t``: MeanFlow's pairs, the first ``round(ratio n)`` rows
        with ``r != t`` (rows are exchangeable, so this is MeanFlow's draw in another row order)."""
        t, r = sample_t_r(n, ratio=1.0, time_dist=self.time_dist, t_mean=self.t_mean, t_std=self.t_std,
                          r_mean=self.r_mean, r_std=self.r_std, pairing=self.time_pairing, device=device)
        k = int(round(self.ratio * n))
        return t, torch.cat([r[:k], t[k:]])

    @torch.no_grad()
    def target(self, net: nn.Module, z: Tensor, t: Tensor, r: Tensor, lam: Tensor, y: Tensor | None = None,
               net_kwargs: dict | None = None) -> Tensor:
        """``(1 - λ) u(z_s, r, s) + λ u(z_t, s, t)`` with ``s = (1 - λ) t + λ r`` and
        ``z_s = z_t - (t - s) u(z_t, s, t)`` (no gradient): ``z [n, *S]``; ``t``, ``r``, ``lam``: ``[n]``;
        returns ``[n, *S]``."""
        kw = net_kwargs or {}
        s = (1 - lam) * t + lam * r
        u2 = net(z, t, t - s, y, **kw).to(z.dtype)
        z_s = z - expand_like(t - s, z) * u2
        u1 = net(z_s, s, s - r, y, **kw).to(z.dtype)
        return expand_like(1 - lam, z) * u1 + expand_like(lam, z) * u2

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
        lam: Tensor | None = None,
    ) -> LossOutput:
        """SplitMeanFlow loss on a batch ``x [B, *S]``.

        One forward with graph on every row, two without on the rows with ``r != t``. ``lam [B]``
        overrides the λ draw (tests; only its ``r != t`` rows are read). Metrics: ``loss``, ``mse``
        (mean unweighted error), ``frac_r_neq_t``.
        """
        b = x.shape[0]
        for name, value in (("noise", noise), ("t", t), ("r", r), ("lam", lam)):
            check_override(name, value, tuple(x.shape) if name == "noise" else (b,))
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        if t is None and r is None:  # drawn: the rows with r != t lead, their count known on the host
            t, r = given_times(None, None, lambda: self.sample_t_r(b, device=x.device), x)
            n = int(round(self.ratio * b))
            rows = slice(0, n)
        else:
            t, r = given_times(t, r, None, x)
            rows = (r != t).nonzero().squeeze(1)
            n = rows.numel()
        e = torch.randn_like(x) if noise is None else noise.to(x.device, dtype)
        z, v = interpolate(x, e, t)
        if y is not None and self.num_classes > 0 and self.class_dropout > 0:
            drop = torch.rand(b, device=x.device) < self.class_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        kw = net_kwargs or {}
        goal = v
        if n > 0:
            lam = torch.rand(b, device=x.device, dtype=dtype) if lam is None else lam.to(x.device, dtype)
            sub = {k: val[rows] if isinstance(val, Tensor) and val.dim() and val.shape[0] == b else val
                   for k, val in kw.items()}
            tgt = self.target(net, z[rows], t[rows], r[rows], lam[rows], None if y is None else y[rows], sub)
            goal = torch.cat([tgt, v[n:]]) if isinstance(rows, slice) else v.index_copy(0, rows, tgt)
        u = net(z, t, t - r, y, **kw)
        with torch.autocast(device_type=x.device.type, enabled=False):
            err = per_sample_sq(u.to(dtype) - goal.detach())
            loss = (err / (err.detach() + self.norm_eps).pow(self.norm_p)).mean()
        metrics = {"loss": loss.detach(), "mse": err.detach().mean(), "frac_r_neq_t": torch.tensor(n / b)}
        return LossOutput(loss=loss, metrics=metrics)

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
        """``z <- z - (t_i - t_{i+1}) u(z, t_{i+1}, t_i)`` on ``1 = t_0 > ... > t_k = 0`` (MeanFlow's sampler;
        ``generator`` unused). ``noise``: ``[B, *S]``; returns ``[B, *S]``."""
        kw = net_kwargs or {}
        grid = resolve_schedule(steps, schedule, noise.device).to(noise.dtype)
        z, b = noise, noise.shape[0]
        for i in range(grid.numel() - 1):
            t_cur, t_next = grid[i], grid[i + 1]
            z = z - (t_cur - t_next) * net(z, t_cur.expand(b), (t_cur - t_next).expand(b), y, **kw)
        return z
