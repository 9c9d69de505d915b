"""TrigFlow (Lu & Song, arXiv 2410.11081) on this project's networks: the exact change of variables.

TrigFlow's path is ``x_θ = cos θ x_0 + sin θ z`` with ``z ~ N(0, σ_d² I)``, ``θ in [0, π/2]`` (written θ
here; the paper's t), and its consistency function is ``f = cos θ x_θ - σ_d sin θ F(x_θ, θ)``
(``c_skip = cos θ``, ``c_out = -σ_d sin θ``). This project's path is ``z_τ = (1 - τ) x + τ e``,
``e ~ N(0, I)``, with a velocity network ``v̂ = net(z_τ, τ, 0, y) ≈ E[e - x | z_τ]``.

Both are the EDM path ``x + σ e`` rescaled: ``σ = σ_d tan θ = τ / (1 - τ)``. Hence, with
``D(θ) = cos θ + σ_d sin θ``,

    τ = σ_d sin θ / D,        θ = atan2(τ, σ_d (1 - τ)),        z_τ = x_θ / D,

and the denoised estimate ``x̂ = z_τ - τ v̂`` (noise estimate ``ê = z_τ + (1 - τ) v̂``) is the same
point in both conventions. TrigFlow's ``F`` of the wrapped network is the velocity of its own path
divided by σ_d, evaluated at (x̂, ê):

    F = cos θ ê - (sin θ / σ_d) x̂ = (A x_θ + v̂) / D,    A(θ) = cos θ - sin θ / σ_d,

so ``f = cos θ x_θ - σ_d sin θ F = x̂`` exactly: a flow-matching network of this project *is* a
TrigFlow model (the initialisation sCD starts from), and sCM's loss stays in TrigFlow coordinates
(as NVlabs/FastGen's ``TrigFlowPrecond`` wraps an x0-predicting EDM network).

The time derivative of ``F`` along a path direction ``ẋ = dx_θ/dθ`` comes from one tangent-mode call of
the network with the tangent of its inputs,

    dz = ẋ / D - x_θ D' / D²,    dτ = σ_d / D²     (D' = -sin θ + σ_d cos θ),

    dF/dθ = (A' x_θ + A ẋ + dv̂) / D - (A x_θ + v̂) D' / D²,    A' = -sin θ - cos θ / σ_d.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from meanflow.methods.base import expand_like
from meanflow.methods.jvp import jvp


def theta_from_sigma(sigma: Tensor, sigma_data: float) -> Tensor:
    """TrigFlow time of the EDM noise level ``σ``: ``θ = atan2(σ, σ_d)`` (``[B] -> [B]``)."""
    return torch.atan2(sigma, torch.full_like(sigma, sigma_data))


def tau_from_theta(theta: Tensor, sigma_data: float) -> Tensor:
    """This project's time ``τ = σ_d sin θ / (cos θ + σ_d sin θ)`` of TrigFlow's ``θ`` (``[B]``)."""
    s = sigma_data * torch.sin(theta)
    return s / (torch.cos(theta) + s)


def theta_from_tau(tau: Tensor, sigma_data: float) -> Tensor:
    """TrigFlow's ``θ = atan2(τ, σ_d (1 - τ))`` of this project's time ``τ`` (``[B]``)."""
    return torch.atan2(tau, sigma_data * (1 - tau))


def trig_scale(theta: Tensor, sigma_data: float) -> Tensor:
    """``D(θ) = cos θ + σ_d sin θ``, the factor with ``x_θ = D z_τ`` (``[B]``)."""
    return torch.cos(theta) + sigma_data * torch.sin(theta)


def trig_F(net: nn.Module, x: Tensor, theta: Tensor, y: Tensor | None, sigma_data: float,
           net_kwargs: dict | None = None, velocity: Tensor | None = None) -> Tensor:
    """TrigFlow's ``F(x_θ, θ) = (A x_θ + v̂) / D`` of a velocity network (``[B, *S]``, graph kept).

    Args:
        net: velocity network ``net(z, τ, h, y)`` (called with ``h = 0``).
        x: ``x_θ [B, *S]`` in TrigFlow coordinates.
        theta: ``θ [B]`` in ``[0, π/2]``.
        y: labels ``[B]`` or None.
        sigma_data: σ_d.
        net_kwargs: extra network inputs.
        velocity: the network's ``v̂`` when already computed (no call then).
    """
    d = trig_scale(theta, sigma_data)
    if velocity is None:
        tau = tau_from_theta(theta, sigma_data)
        velocity = net(x / expand_like(d, x), tau, torch.zeros_like(tau), y, **(net_kwargs or {}))
    a = torch.cos(theta) - torch.sin(theta) / sigma_data
    return (expand_like(a, x) * x + velocity.to(x.dtype)) / expand_like(d, x)


def trig_F_and_tangent(net: nn.Module, x: Tensor, theta: Tensor, y: Tensor | None, dx: Tensor,
                       sigma_data: float, net_kwargs: dict | None = None) -> tuple[Tensor, Tensor]:
    """``F(x_θ, θ)`` (graph kept) and ``dF/dθ`` along ``(ẋ, 1)`` (detached), from one tangent-mode
    call of the network (``jvp``): ``x, dx [B, *S]``, ``theta [B]`` -> ``([B, *S], [B, *S])``."""
    sin, cos = torch.sin(theta), torch.cos(theta)
    d = cos + sigma_data * sin
    d_prime = -sin + sigma_data * cos
    tau = sigma_data * sin / d
    db, dpb = expand_like(d, x), expand_like(d_prime, x)
    z = x / db
    dz = dx / db - x * dpb / db.square()
    dtau = sigma_data / d.square()
    zero = torch.zeros_like(tau)
    v, dv = jvp(net, z, tau, zero, y, dz, dtau, zero, net_kwargs=net_kwargs)
    v, dv = v.to(x.dtype), dv.to(x.dtype)
    a = expand_like(cos - sin / sigma_data, x)
    a_prime = expand_like(-sin - cos / sigma_data, x)
    f = (a * x + v) / db
    df = (a_prime * x + a * dx + dv) / db - (a * x + v.detach()) * dpb / db.square()
    return f, df.detach()


def trig_denoise(net: nn.Module, x: Tensor, theta: Tensor, y: Tensor | None, sigma_data: float,
                 net_kwargs: dict | None = None) -> Tensor:
    """The consistency function ``f(x_θ, θ) = cos θ x_θ - σ_d sin θ F = x̂ = z_τ - τ v̂`` (``[B, *S]``)."""
    d = trig_scale(theta, sigma_data)
    tau = tau_from_theta(theta, sigma_data)
    z = x / expand_like(d, x)
    v = net(z, tau, torch.zeros_like(tau), y, **(net_kwargs or {})).to(x.dtype)
    return z - expand_like(tau, x) * v
