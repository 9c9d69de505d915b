"""Decoupled MeanFlow (Lee et al., arXiv 2510.24474): a flow model turned into a flow map, fine-tuned.

The network is a flow-matching DiT whose last blocks see r instead of t (``network.kwargs.
decoupled_depth``, see :class:`meanflow.networks.dit.DiT`; the MLP and the U-Net have the same split
over their residual blocks), started from a flow-matching run of this
project (``--init-from``), with a zero-initialised log-variance head ``lv(t, r)``. Every sample of a
batch feeds two terms, each with the adaptive ("Cauchy") weight of a learned variance,

    L(pred, tgt, lv) = log(mean(||pred - tgt||^2) e^{-lv} + c) + lv,    c = 0.01,

* flow matching at ``t_fm ~ LN(fm_mean, fm_std)``: ``L(u(z, t, t), v_g, lv(t, t))``;
* MeanFlow at ``t = max(a, b)``, ``r = min(a, b)``, ``a ~ LN(t_mean, t_std)``, ``b ~ LN(r_mean, r_std)``:
  ``L(u(z, r, t), sg(v_g - (t - r) du/dt), lv(t, r))``, ``du/dt`` the JVP with tangent ``(v_g, 0, 1)``
  on ``(z, r, t)`` (the network's tangent mode; the primal is the prediction),

and ``loss = 0.5 (L_fm + L_mf)`` averaged over the batch. Guidance ("mg"): labels are dropped to the null
class with probability ``class_dropout``; for kept rows with ``g_min <= t <= g_max``,
``v_g = v + ω (u(z, t, t | y) - u(z, t, t | ∅))`` from the online network without gradient (effective
scale 1 / (1 - ω)); else ``v_g = v``. Sampling: ``z <- z - (t_i - t_{i+1}) u(z, t_{i+1}, t_i)`` on a
uniform grid (as MeanFlow).

Confirmed in ``kyungmnlee/dmf@2273cce``: ``loss.py`` (``DMFLoss``, ``log_lv_loss``, ``compute_guidance``
"mg"), ``models/dmft.py`` (the split, the shared ``t_embedder``, the ``logvar_linear`` head on 128 + 128
sinusoidal features, zero-initialised; here ``networks.embeddings.LogVarianceHead``) and
``scripts/train_dmf_xl_2_256.sh`` (dmf-depth 20, ω 0.6, g_max 0.7, P-mean 0.0 / 0.4 / -1.2, 400K steps).
The code's ``DMFLoss`` defaults (-0.4 / -0.2 / 0.2) are not what the script trains with; this method's
defaults are the script's.
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
    interpolate,
    resolve_schedule,
)
from meanflow.methods.jvp import jvp
from meanflow.methods.time_sampling import check_time_dist, sample_time


def log_variance_loss(pred: Tensor, target: Tensor, lv: Tensor, eps: float = 0.01) -> Tensor:
    """``log(mean(||pred - target||^2) e^{-lv} + eps) + lv`` per row: ``[B, *S], [B, *S], [B] -> [B]``."""
    mean = (pred - target).square().flatten(1).mean(dim=1)
    return torch.log(mean * torch.exp(-lv) + eps) + lv


def log_variance_of(net: nn.Module):
    """The network's log-variance head ``logvar(t, h) -> [B]`` (through a DDP-style wrapper), or a
    one-line UserError."""
    head = getattr(getattr(net, "module", net), "logvar", None)
    if head is None:
        raise UserError("dmf needs a network with a log-variance head: the DiT, MLP or U-Net with "
                        "network.kwargs.log_variance=true (and decoupled_depth > 0)")
    return head


@dataclass
class DecoupledMeanFlow(Method):
    """Decoupled MeanFlow's fine-tuning objective (defaults: the published XL/2 256 script).

    Attributes:
        fm_mean, fm_std: logit-normal of the flow-matching term's t.
        t_mean, t_std, r_mean, r_std: logit-normal of the two draws whose max / min are (t, r).
        eps: c of the log-variance loss.
        omega: guidance ω (0: none; effective scale 1 / (1 - ω)).
        g_min, g_max: guidance only for ``g_min <= t <= g_max``.
        class_dropout: probability of the null label (needs ``num_classes > 0``).
        num_classes: real classes (null id ``num_classes``); 0 = unconditional.
    """

    fm_mean: float = 0.0
    fm_std: float = 1.0
    t_mean: float = 0.4
    t_std: float = 1.0
    r_mean: float = -1.2
    r_std: float = 1.0
    eps: float = 0.01
    omega: float = 0.0
    g_min: float = 0.0
    g_max: float = 1.0
    class_dropout: float = 0.1
    num_classes: int = 0

    def __post_init__(self) -> None:
        for std in (self.fm_std, self.t_std, self.r_std):
            check_time_dist("logit_normal", std)
        if not self.eps > 0:
            raise UserError(f"eps must be > 0, got {self.eps}")
        if not 0.0 <= self.omega < 1.0:
            raise UserError(f"omega must be in [0, 1), got {self.omega}")
        if not 0.0 <= self.g_min <= self.g_max <= 1.0:
            raise UserError(f"need 0 <= g_min <= g_max <= 1, got {self.g_min}, {self.g_max}")
        if not 0.0 <= self.class_dropout <= 1.0:
            raise UserError(f"class_dropout must be in [0, 1], got {self.class_dropout}")
        if int(self.num_classes) != self.num_classes or self.num_classes < 0:
            raise UserError(f"num_classes must be an integer >= 0, got {self.num_classes}")
        if self.num_classes == 0 and self.omega > 0:
            raise UserError("guidance (omega > 0) needs num_classes > 0")

    def check_network(self, net: nn.Module) -> None:
        """One-line UserError unless ``net`` has the log-variance head (called by the builder)."""
        log_variance_of(net)

    @torch.no_grad()
    def guide(self, net: nn.Module, z: Tensor, t: Tensor, v: Tensor, y: Tensor | None, kept: Tensor | None,
              net_kwargs: dict | None = None) -> Tensor:
        """``v_g [B, *S]``: ``v + ω (u(z, t, t | y) - u(z, t, t | ∅))`` on kept rows inside the interval."""
        if y is None or self.omega == 0.0:
            return v
        zero, kw = torch.zeros_like(t), net_kwargs or {}
        null = torch.full_like(y, self.num_classes)
        diff = net(z, t, zero, y, **kw).to(v.dtype) - net(z, t, zero, null, **kw).to(v.dtype)
        rows = kept & (t >= self.g_min) & (t <= self.g_max)
        return torch.where(expand_like(rows, v), v + self.omega * diff, v)

    def sample_times(self, n: int, device=None) -> tuple[Tensor, Tensor, Tensor]:
        """``(t_fm, t, r)``, each ``[n]``."""
        t_fm = sample_time(n, "logit_normal", self.fm_mean, self.fm_std, device=device)
        a = sample_time(n, "logit_normal", self.t_mean, self.t_std, device=device)
        b = sample_time(n, "logit_normal", self.r_mean, self.r_std, device=device)
        return t_fm, torch.maximum(a, b), torch.minimum(a, b)

    def loss(self, net: nn.Module, x: Tensor, y: Tensor | None = None, *, noise: Tensor | None = None,
             t: Tensor | None = None, r: Tensor | None = None, net_kwargs: dict | None = None) -> LossOutput:
        """DMF loss on ``x [B, *S]``. ``noise`` replaces the MeanFlow term's draw (the flow-matching term
        draws its own), ``t, r`` its times (``t`` also the flow-matching term's). Metrics: ``loss``,
        ``fm_mse``, ``mf_mse`` (plain mean squared errors), ``logvar`` (mean of both heads)."""
        b = x.shape[0]
        check_override("noise", noise, tuple(x.shape))
        for name, value in (("t", t), ("r", r)):
            check_override(name, value, (b,))
        log_variance_of(net)  # a one-line error before any work when the network has no head
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        t_fm, t_mf, r_mf = self.sample_times(b, device=x.device)
        if t is not None:
            t_fm = t_mf = t.to(x.device, dtype)
            r_mf = t_mf if r is None else r.to(x.device, dtype)
        elif r is not None:
            raise UserError("dmf: give t with r")
        if bool((r_mf > t_mf).any()):
            raise UserError("r must be <= t for every sample")
        t_fm, t_mf, r_mf = (s.to(dtype) for s in (t_fm, t_mf, r_mf))
        kept = None
        if y is not None and self.num_classes > 0:
            kept = torch.rand(b, device=x.device) >= self.class_dropout
            y = torch.where(kept, y, torch.full_like(y, self.num_classes))
        kw = net_kwargs or {}
        e = torch.randn_like(x) if noise is None else noise.to(x.device, dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            l_fm, fm_mse = self.fm_term(net, x, torch.randn_like(x), t_fm, y, kept, kw)
            l_mf, mf_mse, lv_mf = self.mf_term(net, x, e, t_mf, r_mf, y, kept, kw)
            loss = (0.5 * (l_fm + l_mf)).mean()
        metrics = {"loss": loss.detach(), "fm_mse": fm_mse, "mf_mse": mf_mse, "logvar": lv_mf.detach().mean()}
        return LossOutput(loss=loss, metrics=metrics)

    def fm_term(self, net, x, e, t, y, kept, net_kwargs=None) -> tuple[Tensor, Tensor]:
        """The flow-matching term per row ``[B]`` (with graph) and its plain MSE, at ``z = (1 - t) x + t e``:
        ``L(u(z, t, t), v_g, lv(t, t))``."""
        z, v = interpolate(x, e, t)
        target = self.guide(net, z, t, v, y, kept, net_kwargs)
        zero = torch.zeros_like(t)
        pred = net(z, t, zero, y, **(net_kwargs or {})).to(x.dtype)
        out = log_variance_loss(pred, target, log_variance_of(net)(t, zero), self.eps)
        return out, (pred.detach() - target).square().mean()

    def mf_term(self, net, x, e, t, r, y, kept, net_kwargs=None) -> tuple[Tensor, Tensor, Tensor]:
        """The MeanFlow term per row ``[B]`` (with graph), its plain MSE and ``lv(t, r) [B]``:
        ``L(u(z, r, t), sg(v_g - (t - r) du/dt), lv(t, r))`` through one tangent-mode call."""
        z, v = interpolate(x, e, t)
        v_g = self.guide(net, z, t, v, y, kept, net_kwargs)
        h = t - r
        ones = torch.ones_like(h)
        u, dudt = jvp(net, z, t, h, y, v_g, ones, ones, net_kwargs=net_kwargs)
        target = (v_g - expand_like(h, v_g) * dudt.to(x.dtype)).detach()
        lv = log_variance_of(net)(t, h)
        out = log_variance_loss(u.to(x.dtype), target, lv, self.eps)
        return out, (u.detach().to(x.dtype) - target).square().mean(), lv

    @torch.no_grad()
    def sample(self, net: nn.Module, noise: Tensor, y: Tensor | None = None, steps: int = 1,
               schedule: Tensor | None = None, *, net_kwargs: dict | None = None,
               generator: NoiseSource = None) -> Tensor:
        """``z <- z - (t_i - t_{i+1}) u(z, t_{i+1}, t_i)`` on ``1 = t_0 > ... > t_k = 0`` (one step:
        ``e - u(e, 0, 1)``)."""
        kw = net_kwargs or {}
        grid = resolve_schedule(steps, schedule, noise.device).to(noise.dtype)
        z, b = noise, noise.shape[0]
        for i in range(grid.numel() - 1):
            gap = grid[i] - grid[i + 1]
            z = z - gap * net(z, grid[i].expand(b), gap.expand(b), y, **kw)
        return z
