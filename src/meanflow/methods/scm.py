"""Continuous-time consistency training, sCT (Lu & Song, arXiv 2410.11081), on the TrigFlow path.

The consistency function ``f(x_θ, θ) = cos θ x_θ - σ_d sin θ F_θ(x_θ, θ)`` is this project's velocity
network through the exact change of variables of :mod:`meanflow.methods.trigflow` (``f = x̂``). Along
the probability-flow ODE with direction ``ẋ = dx_θ/dθ`` (sCT: the conditional ``cos θ z - sin θ x_0``,
``z = σ_d e``), the stop-gradient target direction is ``g = cos θ df⁻/dθ``:

    g = -cos²θ (σ_d F⁻ - ẋ) - r cos θ sin θ (x_θ + σ_d dF⁻/dθ),

with ``dF⁻/dθ`` a JVP of the network along ``(ẋ, 1)`` through its tangent mode (one call returns ``F``
with its graph and the JVP, so both see the same dropout masks), the tangent warm-up ``r = min(1, k /
warmup_steps)``, and the tangent normalisation ``g <- g / (||g|| + c)`` (``||g||`` the RMS over a sample's
entries by default, NVlabs/FastGen's ``g_norm_spatial_invariance``; ``"l2"``: the paper's L2 norm).
Loss per sample, with the adaptive weighting ``w_φ(θ) = -lv`` from the network's log-variance head:

    L = e^{-lv} / (σ_d tan θ) · mean((F_θ - F⁻ - g)²) + lv,      1 / (σ_d tan θ) = 1 / σ (prior weight).

``F⁻ = sg(F_θ)``, so the gradient is ``-2 e^{-lv} / σ · g · ∂F_θ`` (per entry, averaged).
Proposal: ``ln σ ~ N(P_mean, P_std²)`` truncated to ``[σ_min, σ_max]``, ``θ = atan2(σ, σ_d)``.
Sampling: ``x̂ = f(τ_0 e, θ_max)`` (``σ_max = 80``), then for 2 steps re-noise at ``σ_mid``, apply ``f``.

Confirmed in ``NVlabs/FastGen@34f30e8``: ``fastgen/methods/consistency_model/sCM.py`` (``TrigFlowPrecond``
l.21-80: a denoiser wrapped by SNR matching; ``_compute_scm_loss`` l.183-238: ``θ = atan2(σ, σ_d)``,
``z = σ_d e``, sCT ``ẋ``, sCD teacher guidance; ``_scm_pred_to_loss`` l.240-287: ``g``, warm-up, RMS
normalisation with c = 0.1, prior weight ``1/σ``, ``weight / (e^{lv} D) mean(...) + lv``), and
``fastgen/configs/methods/config_scm.py`` (P_mean -1.0, P_std 1.4, σ_d 0.5, warm-up 10,000 steps, c 0.1).
FastGen divides the pixel mean by D once more (``divide_x_0_spatial_dim``); this shifts the learned lv
by ln D and leaves the gradient at the lv optimum unchanged; the paper's form (one mean) is used here.
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
    resolve_schedule,
)
from meanflow.methods.trigflow import theta_from_sigma, trig_F_and_tangent

TANGENT_NORMS = ("rms", "l2", "none")


def truncated_log_normal(n: int, mean: float, std: float, lo: float, hi: float,
                         device=None, generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws of ``σ`` with ``ln σ ~ N(mean, std²)`` truncated to ``[lo, hi]`` (inverse CDF, float64
    inside), returned as float32 ``[n]``."""
    a = torch.tensor([(math.log(lo) - mean) / std, (math.log(hi) - mean) / std], dtype=torch.float64)
    c = torch.special.ndtr(a)
    u = torch.rand(n, dtype=torch.float64, generator=generator)
    u = (c[0] + (c[1] - c[0]) * u).clamp(1e-300, 1 - 1e-16)
    sigma = torch.exp(mean + std * torch.special.ndtri(u)).clamp(lo, hi)
    return sigma.to(device=device, dtype=torch.float32)


def log_variance_head(net: nn.Module, method: str):
    """The network's log-variance head ``logvar(t, h) -> [B]`` (through a DDP-style wrapper), or a
    one-line UserError naming ``method``."""
    head = getattr(getattr(net, "module", net), "logvar", None)
    if head is None:
        raise UserError(f"{method} with adaptive_weight=true needs a network with a log-variance head "
                        "(network.kwargs.log_variance=true: mlp, dit, unet), or set "
                        "method.kwargs.adaptive_weight=false")
    return head


@dataclass
class ContinuousConsistencyTraining(Method):
    """sCT: continuous-time consistency training on TrigFlow (defaults: FastGen's sCM config).

    Attributes:
        sigma_data: σ_d of TrigFlow (0.5 for images in [-1, 1]).
        p_mean, p_std: the proposal ``ln σ ~ N(p_mean, p_std²)`` (CIFAR-10 -1.0, 1.4; ImageNet 1.6).
        sigma_min, sigma_max: truncation of the proposal (FastGen trains sCT on CIFAR-10 up to 800).
        warmup_steps: optimizer steps of the tangent warm-up ``r = min(1, k / warmup_steps)`` (0: none).
        tangent_norm: ``"rms"`` (FastGen), ``"l2"`` (the paper's ``||g||``) or ``"none"``.
        norm_const: c of ``g / (||g|| + c)``.
        prior_weight: multiply by ``1 / σ = 1 / (σ_d tan θ)``.
        adaptive_weight: learn ``lv(θ)`` with the network's log-variance head (``e^{-lv} L + lv``).
        sample_sigma_max: σ the samplers start from (``θ_max = atan(σ_max / σ_d)``).
        sample_sigma_mid: σ of the intermediate point of the 2-step sampler (FastGen's CIFAR-10 grid
            ``[80, 0.821, 0]``; ImageNet-64: 1.1).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"progress"})

    sigma_data: float = 0.5
    p_mean: float = -1.0
    p_std: float = 1.4
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    warmup_steps: int = 10000
    tangent_norm: str = "rms"
    norm_const: float = 0.1
    prior_weight: bool = True
    adaptive_weight: bool = True
    sample_sigma_max: float = 80.0
    sample_sigma_mid: float = 0.821

    def __post_init__(self) -> None:
        checks = [
            (self.sigma_data > 0, f"sigma_data must be > 0, got {self.sigma_data}"),
            (self.p_std > 0, f"p_std must be > 0, got {self.p_std}"),
            (0 < self.sigma_min < self.sigma_max,
             f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"),
            (int(self.warmup_steps) == self.warmup_steps and self.warmup_steps >= 0,
             f"warmup_steps must be an integer >= 0, got {self.warmup_steps}"),
            (self.tangent_norm in TANGENT_NORMS,
             f"unknown tangent_norm {self.tangent_norm!r}; choose from {', '.join(TANGENT_NORMS)}"),
            (self.norm_const > 0, f"norm_const must be > 0, got {self.norm_const}"),
            (0 < self.sample_sigma_mid < self.sample_sigma_max,
             f"need 0 < sample_sigma_mid < sample_sigma_max, got {self.sample_sigma_mid}, "
             f"{self.sample_sigma_max}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)

    @property
    def name(self) -> str:
        return "sct"

    @property
    def network_options(self) -> dict:
        """Network options the builder sets: the log-variance head of the adaptive weighting."""
        return {"log_variance": True} if self.adaptive_weight else {}

    def check_network(self, net: nn.Module) -> None:
        """A one-line UserError when the adaptive weighting has no log-variance head to learn."""
        if self.adaptive_weight:
            log_variance_head(net, self.name)

    # ------------------------------------------------------------------ training

    def draw_sigma(self, n: int, device=None) -> Tensor:
        """The proposal: ``σ [n]`` with ``ln σ ~ N(p_mean, p_std²)`` truncated to ``[σ_min, σ_max]``."""
        return truncated_log_normal(n, self.p_mean, self.p_std, self.sigma_min, self.sigma_max, device)

    def path_velocity(self, x0: Tensor, z: Tensor, x: Tensor, theta: Tensor, y: Tensor | None,
                      net_kwargs: dict | None, teacher: nn.Module | None) -> Tensor:
        """``ẋ = dx_θ/dθ``; sCT: the conditional ``cos θ z - sin θ x_0`` (``[B, *S]``)."""
        return expand_like(torch.cos(theta), x) * z - expand_like(torch.sin(theta), x) * x0

    def tangent(self, f: Tensor, df: Tensor, x: Tensor, dx: Tensor, theta: Tensor, r: float) -> Tensor:
        """Normalised ``g = -cos²θ (σ_d F⁻ - ẋ) - r cos θ sin θ (x_θ + σ_d dF⁻/dθ)`` (``[B, *S]``)."""
        sin, cos = expand_like(torch.sin(theta), x), expand_like(torch.cos(theta), x)
        sd = self.sigma_data
        g = -cos.square() * (sd * f.detach() - dx) - r * cos * sin * (x + sd * df)
        if self.tangent_norm == "none":
            return g
        norm = g.flatten(1).norm(dim=1)
        if self.tangent_norm == "rms":
            norm = norm / math.sqrt(g[0].numel())
        return g / (expand_like(norm, g) + self.norm_const)

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
        teacher: nn.Module | None = None,
    ) -> LossOutput:
        """The sCM loss on ``x [B, *S]`` (see the module docstring). ``t`` overrides the draw in this
        project's time (``σ = t / (1 - t)``); ``r`` is not used. Metrics: ``loss``, ``mse`` (mean of
        ``(F_θ - F⁻ - g)²``), ``logvar``, ``warmup``, ``g_rms`` (RMS of the normalised ``g``)."""
        if progress is None:
            raise UserError(f"{self.name} needs the training progress (progress=Progress(step, total))")
        b = x.shape[0]
        check_override("noise", noise, tuple(x.shape))
        check_override("t", t, (b,))
        dtype = torch.promote_types(x.dtype, torch.float32)
        x0 = x.to(dtype)
        if t is None:
            sigma = self.draw_sigma(b, device=x.device).to(dtype)
        else:
            if bool(((t <= 0) | (t >= 1)).any()):
                raise UserError("t must be in (0, 1) for sCM")
            sigma = (t / (1 - t)).to(x.device, dtype)
        theta = theta_from_sigma(sigma, self.sigma_data)
        e = torch.randn_like(x0) if noise is None else noise.to(x.device, dtype)
        z = self.sigma_data * e
        xt = expand_like(torch.cos(theta), x0) * x0 + expand_like(torch.sin(theta), x0) * z
        warm = 1.0 if self.warmup_steps == 0 else min(1.0, progress.step / self.warmup_steps)
        with torch.autocast(device_type=x.device.type, enabled=False):
            with torch.no_grad():
                dx = self.path_velocity(x0, z, xt, theta, y, net_kwargs, teacher)
            f, df = trig_F_and_tangent(net, xt, theta, y, dx, self.sigma_data, net_kwargs)
            g = self.tangent(f, df, xt, dx, theta, warm).detach()
            err = (f - f.detach() - g).square().flatten(1).mean(dim=1)
            weight = 1.0 / sigma if self.prior_weight else torch.ones_like(sigma)
            if self.adaptive_weight:
                tau = sigma / (1 + sigma)
                lv = log_variance_head(net, self.name)(tau, torch.zeros_like(tau)).to(dtype)
                per = weight * torch.exp(-lv) * err + lv
            else:
                lv = torch.zeros_like(sigma)
                per = weight * err
            loss = per.mean()
        metrics = {"loss": loss.detach(), "mse": err.detach().mean(), "logvar": lv.detach().mean(),
                   "warmup": torch.tensor(warm), "g_rms": g.detach().square().mean().sqrt()}
        return LossOutput(loss=loss, metrics=metrics)

    # ------------------------------------------------------------------ sampling

    def sample_grid(self, steps: int, schedule: Tensor | None, device) -> Tensor:
        """This project's times ``τ_0 > ... > τ_k = 0`` the sampler visits (float64 ``[k + 1]``): 1 step
        ``[τ(σ_max), 0]``; 2 steps ``[τ(σ_max), τ(σ_mid), 0]``; more (or a given ``schedule`` from 1 to
        0) the uniform grid / the schedule with its first point moved to ``τ(σ_max)``."""
        tau_max = self.sample_sigma_max / (1 + self.sample_sigma_max)
        if schedule is None and steps == 2:
            mid = self.sample_sigma_mid / (1 + self.sample_sigma_mid)
            return torch.tensor([tau_max, mid, 0.0], dtype=torch.float64, device=device)
        grid = resolve_schedule(steps, schedule, device).clone()
        grid[0] = tau_max
        if grid.numel() > 2 and not bool(grid[1] < tau_max):
            raise UserError(f"the schedule's second time must be < {tau_max:.6f} (σ_max = "
                            f"{self.sample_sigma_max})")
        return grid

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
        """Consistency sampling: ``z = τ_0 e`` (TrigFlow's ``x = sin θ_max σ_d e``), then for each
        ``τ_i``: ``x̂ = z - τ_i v̂(z, τ_i) = f(x_θ, θ)`` and, unless last, ``z = (1 - τ_{i+1}) x̂ +
        τ_{i+1} ε`` with fresh ``ε`` from ``generator``. ``noise [B, *S]`` -> samples ``[B, *S]``."""
        kw = net_kwargs or {}
        grid = self.sample_grid(steps, schedule, noise.device).to(noise.dtype)
        b = noise.shape[0]
        z = grid[0] * noise
        x_hat = z
        for i in range(grid.numel() - 1):
            tau = grid[i].expand(b)
            x_hat = z - grid[i] * net(z, tau, torch.zeros_like(tau), y, **kw).to(z.dtype)
            if i + 2 < grid.numel():
                z = (1 - grid[i + 1]) * x_hat + grid[i + 1] * fresh_noise(x_hat, generator)
        return x_hat
