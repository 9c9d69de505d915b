"""pixel MeanFlow (pMF; arXiv 2601.22158): one-step generation in pixel space with x-prediction.

The network outputs an image ``x_hat(z_t, h | y, w, t_min, t_max)`` (``pmf-dit``: u-head and v-head)
and the average velocity is read from it, dividing by ``t`` (not ``h``):

    u = (z_t - x_hat) / c(t),   c(t) = clip(t, 0.05, 1),   so one step from z_1 = e gives e - u = x_hat.

The loss is iMF's velocity-space loss (:mod:`meanflow.methods.improved_meanflow`), with ``v_t = (z_t -
x) / c(t)`` (``= e - x`` for ``t >= 0.05``) and the auxiliary v-head ``v = (z_t - x_hat_v) / c(t)``:

    w_eff = w if t_min <= t <= t_max else 1
    v_c   = sg(v_head(z, t, h = 0 | y,    w_eff, [0, 1]))     (the JVP tangent too)
    v_u   = sg(v_head(z, t, h = 0 | null, 1,     [0, 1]))
    v_g   = v_t + (1 - 1/w_eff) (v_c - v_u);  dropped rows: label -> null, v_g = v_t
    u, du/dt = jvp(u(. | y', w, t_min, t_max), (z, t, r), (v_c, 1, 0))
    du/dt = (v_c - d x_hat - u c'(t)) / c(t),   c' = 1 on (0.05, 1), else 0
    L_u = ||u + (t - r) sg(du/dt) - sg(v_g)||^2,  L_v = ||v - sg(v_g)||^2   (v from the same call as u)
    L_p = ||LPIPS(crop(z - t u), crop(x))||,  L_c = ||f(crop(z - t u)) - f(crop(x))||^2   (rows t < 0.8)
    loss = mean_i [a(L_u) + lambda_v a(L_v) + lambda_p a(L_p) + lambda_c a(L_c)],  a(L) = L / sg((L + c)^p)

Confirmed in ``github.com/Lyy-iiis/pMF`` at ``75f6073`` (``pmf.py``, ``models/pmfDiT.py``,
``configs/pMF_*_config.yml``, ``configs/default.py``; read for facts, no code copied):

========================================  =============================================================
fact                                      source
========================================  =============================================================
u = (z - x_hat) / clip(t, 0.05, 1)        ``pmfDiT.py:373-376`` (same for the v-head)
v_t = (z_t - x) / clip(t, 0.05, 1)        ``pmf.py:396-397``; ``e = noise_scale N(0, I)`` (``l.395``)
t, r ~ LN(0.8, 0.8), sorted; the first    ``pmf.py:150-181``; ``P_mean = P_std = 0.8`` in every
int(0.5 B) rows have r = t                config (``configs/pMF_*_config.yml:8-9``)
w ~ w^-beta on [1, 1 + 7]                 ``pmf.py:183-203`` (``cfg_max = 7``, ``default.py:60``);
                                          beta 1 (B), 2 (L) (``pMF_*_config.yml:6``)
t_min ~ U[0, .5], t_max ~ U[.5, 1];       ``pmf.py:205-221``
[0, 1] on r = t rows
v_c, v_u from the v-head at h = 0,        ``pmf.py:254-303, 337-367`` (the guided target; ``v_c``
interval [0, 1], v_u at w = 1, undropped  recomputed at ``w_eff``; both forms equal the table above)
label; v_g as above
label drop 0.1 on a contiguous PREFIX:    ``pmf.py:305-335``: ``k = #(U < 0.1)``, rows ``0..k-1``;
rows 0..k-1                               they overlap the r = t prefix (FRONTIER trap 3)
tangent (v_c, 1, 0) on (z, t, r);         ``pmf.py:411-422``; ``v`` is the aux output of the same
V = u + (t - r) sg(du/dt)                 call (``has_aux``): ``h = t - r``, the dropped label
loss_u, loss_v summed per sample,         ``pmf.py:424-436, 460-462``; ``norm_p = 1``,
a(L) = L / sg(L + 0.01), mean over rows   ``norm_eps = 0.01`` (``default.py:63-65``)
perceptual on z - t u vs x, t < 0.8,      ``pmf.py:438-456``; ``lpips_lambda 0.4``, ``convnext_lambda
each a(.), x 0.4 (LPIPS), 0.1 (ConvNeXt)  0.1``, ``perceptual_max_t 0.8`` (``pMF_*_config.yml:12-16``)
sampling z <- z - (t_i - t_{i+1}) u,      ``pmf.py:52-67, 120-144``; eval configs: B/16 8.5 [.1, .7],
z_1 = noise_scale e                       L/16 7.0 [.2, .7], B/32 6.5 [.1, .7]; noise_scale 2 at 512
========================================  =============================================================

Options beyond the official code (documented, defaults neutral): the perceptual weights default to 0
(the published 0.4 / 0.1 need the user's weights files); ``aux_head=False`` reads the auxiliary velocity
as the u-head at ``h = 0`` (iMF's reading, for networks without a v-head); the sampling guidance
defaults to none. The ``noise`` override is the standard-normal draw, scaled by ``noise_scale`` here.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.methods.base import (
    LossOutput,
    NoiseSource,
    check_override,
    expand_like,
    given_times,
    per_sample_sq,
)
from meanflow.methods.improved_meanflow import GUIDANCE_KEY, ImprovedMeanFlow
from meanflow.methods.jvp import caller_autocast, jvp, moving_rows, pad_rows, take_rows
from meanflow.methods.time_sampling import sample_time


@dataclass
class PixelMeanFlow(ImprovedMeanFlow):
    """Pixel MeanFlow (pMF): x-prediction, iMF's velocity loss with a v-head, perceptual losses.

    Inherits iMF's options (``ratio`` = share of r != t rows, guidance draws, ``class_dropout``,
    ``v_weight``, sampling guidance, ``jvp_precision``); the time defaults are pMF's LN(0.8, 0.8).

    Attributes:
        noise_scale: ``e = noise_scale N(0, I)`` in training and sampling (1; 2 at 512 px officially).
        min_t: ``c(t) = clip(t, min_t, 1)`` in ``u = (z - x_hat) / c(t)`` (0.05).
        uniform_share: share of rows whose t and r are redrawn from U(0, 1) before the r = t prefix
            (the official H configs' ``tr_uniform: True`` = 0.1; 0 = off, the default).
        aux_head: True: the auxiliary velocity comes from the network's v-head (``head="v"``/``"uv"``,
            ``pmf-dit``); False: from the network itself at ``h = 0`` (any network).
        perceptual_max_t: the perceptual losses see rows with ``t < perceptual_max_t`` (0.8).
        perceptual_size: side of the paired random resized crop fed to both perceptual networks (224).
        lpips_weight: weight of the LPIPS-VGG loss (official 0.4; 0 here: needs ``lpips_weights``).
        lpips_weights: local LPIPS-VGG weights file (see :mod:`meanflow.evaluation.lpips`).
        lpips_sha256: expected sha256 (or a prefix of >= 8 hex digits) of ``lpips_weights``.
        convnext_weight: weight of the ConvNeXt-V2-B feature loss (official 0.1; 0 here).
        convnext_weights: local ``.safetensors`` of ConvNeXt-V2-B (see :mod:`meanflow.evaluation.convnext`).
        convnext_sha256: expected sha256 (or prefix) of ``convnext_weights``.
    """

    t_mean: float = 0.8
    t_std: float = 0.8
    noise_scale: float = 1.0
    min_t: float = 0.05
    uniform_share: float = 0.0
    aux_head: bool = True
    perceptual_max_t: float = 0.8
    perceptual_size: int = 224
    lpips_weight: float = 0.0
    lpips_weights: str | None = None
    lpips_sha256: str | None = None
    convnext_weight: float = 0.0
    convnext_weights: str | None = None
    convnext_sha256: str | None = None

    def __post_init__(self) -> None:
        from meanflow.methods.pmf_perceptual import check_weights_option

        super().__post_init__()
        if not 0 < self.noise_scale < float("inf"):
            raise UserError(f"noise_scale must be a finite number > 0, got {self.noise_scale}")
        if not 0 < self.min_t <= 1:
            raise UserError(f"min_t must be in (0, 1], got {self.min_t}")
        if not 0 <= self.uniform_share <= 1:
            raise UserError(f"uniform_share must be in [0, 1], got {self.uniform_share}")
        if not isinstance(self.aux_head, bool):
            raise UserError(f"aux_head must be true or false, got {self.aux_head!r}")
        if not 0 <= self.perceptual_max_t <= 1:
            raise UserError(f"perceptual_max_t must be in [0, 1], got {self.perceptual_max_t}")
        if int(self.perceptual_size) != self.perceptual_size or self.perceptual_size < 16:
            raise UserError(f"perceptual_size must be an integer >= 16, got {self.perceptual_size}")
        check_weights_option(self.lpips_weight, self.lpips_weights, self.lpips_sha256,
                             "LPIPS-VGG weights file", "lpips")
        check_weights_option(self.convnext_weight, self.convnext_weights, self.convnext_sha256,
                             "ConvNeXt-V2-B weights file", "convnext")

    # ------------------------------------------------------------------ pieces

    def clip_t(self, t: Tensor) -> Tensor:
        """``c(t) = clip(t, min_t, 1)`` ``[B]``."""
        return t.clamp(self.min_t, 1.0)

    def velocity(self, net: nn.Module, head: str | None = None):
        """A callable ``(z, t, h, y, **kw) -> (z - x_hat) / c(t)``: the network read as a velocity
        (``head`` given: that head of a ``pmf-dit``)."""

        def call(z: Tensor, t: Tensor, h: Tensor, y: Tensor | None, **kw) -> Tensor:
            x_hat = net(z, t, h, y, **({**kw, "head": head} if head else kw))
            return (z - x_hat.to(z.dtype)) / expand_like(self.clip_t(t), z)

        return call

    def draw_times(self, b: int, *, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
        """``(t, r)`` ``[b]``: two LN(t_mean, t_std) draws; with ``uniform_share`` = q > 0, rows with
        ``U(0, 1) < q`` redraw both from U(0, 1); then ``r = t`` on the first ``int(b (1 - ratio))`` rows
        (the official prefix) and a sort so that ``r <= t`` (``pmf.py`` ``sample_tr``)."""
        kw = dict(device=device, dtype=dtype)
        a = sample_time(b, self.time_dist, self.t_mean, self.t_std, **kw)
        c = sample_time(b, self.time_dist, self.t_mean, self.t_std, **kw)
        if self.uniform_share > 0:
            swap = torch.rand(b, **kw) < self.uniform_share
            a = torch.where(swap, torch.rand(b, **kw), a)
            c = torch.where(swap, torch.rand(b, **kw), c)
        fm = torch.arange(b, device=device) < int(b * (1 - self.ratio) + 1e-9)
        c = torch.where(fm, a, c)
        return torch.maximum(a, c), torch.minimum(a, c)

    def drop_prefix(self, b: int, device=None) -> Tensor:
        """Label-drop mask ``[b]``: the first ``k`` rows, ``k = #{i: U_i < class_dropout}`` (official)."""
        k = (torch.rand(b, device=device) < self.class_dropout).sum()
        return torch.arange(b, device=device) < k

    def _adaptive(self, err: Tensor) -> Tensor:
        return err / (err.detach() + self.norm_eps).pow(self.norm_p)

    # ------------------------------------------------------------------ training

    def loss(self, net: nn.Module, x: Tensor, y: Tensor | None = None, *, noise: Tensor | None = None,
             t: Tensor | None = None, r: Tensor | None = None, net_kwargs: dict | None = None,
             omega: Tensor | None = None, interval: tuple[Tensor, Tensor] | None = None,
             drop: Tensor | None = None, generator: torch.Generator | None = None) -> LossOutput:
        """pMF loss on a batch (module docstring).

        Args:
            net: Network ``net(z, t, h, y, **net_kwargs) -> x_hat`` (``head="uv"`` with ``aux_head``).
            x: Data ``[B, *S]`` (images ``[B, C, H, W]`` in [-1, 1] for the perceptual losses).
            y: Class ids ``[B]``; required when ``num_classes > 0``.
            noise: Optional standard-normal draw ``[B, *S]`` (scaled by ``noise_scale``).
            t, r: Optional times ``[B]`` (one given: the other equals it).
            net_kwargs: Extra keyword inputs of every network call (not ``guidance`` or ``head``).
            omega, interval, drop: Optional training guidance ``[B]``, ``(t_min, t_max)`` and label-drop
                mask (tests).
            generator: RNG of the perceptual crops (default: torch's global RNG).

        Returns:
            :class:`LossOutput`; metrics ``loss``, ``loss_u``, ``loss_v`` (mean per-sample squared errors),
            ``u_v_mse``, ``frac_r_neq_t``, and ``lpips`` / ``convnext`` (mean distance on the rows used).
        """
        b = x.shape[0]
        for name, val, shape in (("noise", noise, tuple(x.shape)), ("t", t, (b,)), ("r", r, (b,)),
                                 ("omega", omega, (b,)), ("drop", drop, (b,))):
            check_override(name, val, shape)
        kw = self._check_inputs(net, y, net_kwargs)
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        t, r = given_times(t, r, lambda: self.draw_times(b, device=x.device), x)
        e = self.noise_scale * (torch.randn_like(x) if noise is None else noise.to(x.device, dtype))
        tb = expand_like(t, x)
        z = (1 - tb) * x + tb * e
        v_t = (z - x) / expand_like(self.clip_t(t), x)
        h = t - r
        jvp_context = (caller_autocast(x.device.type) if self.jvp_precision == "autocast"
                       else contextlib.nullcontext())
        with torch.autocast(device_type=x.device.type, enabled=False):
            y_in, v_g, v_c, kw_in = self._targets(net, z, t, r, v_t, y, kw, omega, interval, drop)
            x0, t0 = x, t  # the perceptual losses see the rows in their given order (crops drawn per row)
            order, rows = moving_rows(net, t, r)
            x, z, t, r, h, y_in, v_c, v_g, v_t, kw_in = take_rows(
                order, b, x, z, t, r, h, y_in, v_c, v_g, v_t, kw_in)
            with jvp_context:
                x_hat, dx_hat, x_v = self._predict(net, z, t, h, y_in, v_c, kw_in, rows)
            ct = expand_like(self.clip_t(t), z)
            u = (z - x_hat) / ct
            n = dx_hat.shape[0]
            with torch.no_grad():
                moving = ((t > self.min_t) & (t < 1)).to(dtype)[:n]
                dudt = (v_c[:n] - dx_hat - u[:n] * expand_like(moving, u)) / ct[:n]
            err_u = per_sample_sq(u + expand_like(h, u) * pad_rows(dudt, b) - v_g)
            total = self._adaptive(err_u)
            metrics = {"loss_u": err_u.detach().mean()}
            if x_v is not None:
                err_v = per_sample_sq((z - x_v) / ct - v_g)
                total = total + self.v_weight * self._adaptive(err_v)
                metrics["loss_v"] = err_v.detach().mean()
            x_pred = z - expand_like(t, z) * u
            if order is not None:
                x_pred = x_pred.index_select(0, torch.argsort(order))
            loss = total.mean() + self._perceptual(x_pred, x0, t0, metrics, generator).mean()
        with torch.no_grad():
            metrics.update(loss=loss.detach(), u_v_mse=per_sample_sq(u.detach() - v_t).mean(),
                           frac_r_neq_t=(r != t).float().mean())
        return LossOutput(loss=loss, metrics=metrics)

    def _check_inputs(self, net: nn.Module, y: Tensor | None, net_kwargs: dict | None) -> dict:
        """One-line UserErrors for inputs pmf cannot use; the network keyword inputs as a new dict."""
        kw = dict(net_kwargs or {})
        for key in (GUIDANCE_KEY, "head"):
            if key in kw:
                raise UserError(f"net_kwargs must not contain {key!r}: pmf sets it itself")
        if self.conditional and y is None:
            raise UserError("pmf with num_classes > 0 needs class labels y")
        if self.aux_head and "uv" not in _heads(net):
            raise UserError("pmf with aux_head=true needs a network with a v-head (pmf-dit with "
                            "aux_head_depth >= 1); with aux_head=false the auxiliary velocity is the "
                            "network's own at h = 0")
        return kw

    def _targets(self, net, z, t, r, v_t, y, kw, omega, interval, drop):
        """``(y_in, v_g, v_c, kw_in)``: the network's label and keyword inputs, the guided target and the
        tangent, all ``[B, ...]`` (no gradient)."""
        b = t.shape[0]
        v_head = self.velocity(net, "v" if self.aux_head else None)
        zero = torch.zeros_like(t)
        if not self.conditional:
            with torch.no_grad():
                v_c = v_head(z, t, zero, None, **kw)
            return y, v_t, v_c, kw
        if omega is None:
            omega = self.sample_omega_train(b, device=z.device, dtype=z.dtype)
        if interval is None:
            interval = self.sample_interval_train(r == t, dtype=z.dtype)
        check_override("interval[0]", interval[0], (b,))
        check_override("interval[1]", interval[1], (b,))
        omega = omega.to(z.device, z.dtype)
        t_min, t_max = (a.to(z.device, z.dtype) for a in interval)
        v_g, v_c = self._guided_target(v_head, z, t, v_t, y, omega, t_min, t_max, kw)
        drop = self.drop_prefix(b, z.device) if drop is None else drop.to(z.device)
        y_in = torch.where(drop, torch.full_like(y, self.num_classes), y)
        v_g = torch.where(expand_like(drop, v_t), v_t, v_g)
        return y_in, v_g, v_c, {**kw, GUIDANCE_KEY: torch.stack([omega, t_min, t_max], dim=1)}

    def _predict(self, net, z, t, h, y, v_c, kw, rows):
        """``(x_hat [B], d x_hat [rows or B] (detached), x_hat_v [B] or None)`` from one network call along
        the tangent ``(v_c, 1, 1)`` on ``(z, t, h)``."""
        if not self.aux_head or self.v_weight == 0:  # iMF's call: the u-head, and (h = 0) rows for v
            return self._forward_pair(net, z, t, h, y, v_c, kw, rows)
        ones = torch.ones_like(t)
        out, dout = jvp(net, z, t, h, y, v_c, ones, ones, net_kwargs={**kw, "head": "uv"}, rows=rows)
        c = z.shape[1]
        return out[:, :c].to(z.dtype), dout[:, :c].to(z.dtype), out[:, c:].to(z.dtype)

    def _perceptual(self, x_pred: Tensor, x: Tensor, t: Tensor, metrics: dict,
                    generator: torch.Generator | None) -> Tensor:
        """``lambda_p a(LPIPS) + lambda_c a(ConvNeXt)`` per row ``[B]`` on rows with ``t <
        perceptual_max_t`` (0 elsewhere; all 0 when both weights are 0)."""
        if self.lpips_weight == 0 and self.convnext_weight == 0:
            return x.new_zeros(x.shape[0])
        from meanflow.methods import pmf_perceptual as P

        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise UserError(f"pmf's perceptual losses need images [B, 1 or 3, H, W], got {tuple(x.shape)}")
        idx = (t < self.perceptual_max_t).nonzero().flatten()
        total = x.new_zeros(x.shape[0])
        if idx.numel() == 0:
            return total
        a, b = P.paired_random_resized_crop(x_pred[idx], x[idx], self.perceptual_size, generator=generator)
        for name, weight, fn, path, sha in (
                ("lpips", self.lpips_weight, P.lpips_distance, self.lpips_weights, self.lpips_sha256),
                ("convnext", self.convnext_weight, P.convnext_distance, self.convnext_weights,
                 self.convnext_sha256)):
            if weight > 0:
                d = fn(a, b, os.fspath(path), sha).to(x.dtype)
                total = total.index_add(0, idx, weight * self._adaptive(d))
                metrics[name] = d.detach().mean()
        return total

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, net: nn.Module, noise: Tensor, y: Tensor | None = None, steps: int = 1,
               schedule: Tensor | None = None, *, net_kwargs: dict | None = None,
               generator: NoiseSource = None, omega: float | None = None,
               interval: tuple[float, float] | None = None) -> Tensor:
        """One- or few-step generation, 1 NFE per step, guidance chosen now.

        From ``z_1 = noise_scale e`` on a grid ``1 = t_0 > ... > t_k = 0``: ``z <- z - (t_i - t_{i+1})
        u(z, t_i, h = t_i - t_{i+1})``, ``u = (z - x_hat) / c(t_i)``; one step returns ``x_hat(e, h = 1)``.
        Arguments as :meth:`ImprovedMeanFlow.sample` (``noise`` is ``N(0, I)``, ``[B, *S]``).
        """
        if "head" in (net_kwargs or {}):
            raise UserError("net_kwargs must not contain 'head': pmf samples with the u-head")
        return super().sample(self.velocity(net), self.noise_scale * noise, y, steps, schedule,
                              net_kwargs=net_kwargs, generator=generator, omega=omega, interval=interval)


def _heads(net: nn.Module) -> tuple[str, ...]:
    """The ``head`` values a network takes (its ``heads``, or that of the module a wrapper holds)."""
    for m in (net, getattr(net, "module", None), getattr(net, "_orig_mod", None)):
        if m is not None and getattr(m, "heads", None):
            return tuple(m.heads)
    return ()
