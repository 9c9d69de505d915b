"""Improved MeanFlow's guidance as a network input: its training draws and its guided target.

Per sample (see :mod:`~meanflow.methods.improved_meanflow` for the loss and the sources)::

    w      ~ density w^-beta on [1, omega_max]      (beta = 1: log-uniform)
    t_min  ~ U(0, s),  t_max ~ U(s, 1)              ([0, 1] for the rows with r = t)
    w_eff  = w if t_min <= t <= t_max else 1
    v_c    = v_theta(z, t | y,    w_eff, 0, 1)      (h = 0, no gradient; also the JVP tangent)
    v_u    = v_theta(z, t | null, 1,     0, 1)
    v_g    = v + (1 - 1/w_eff) (v_c - v_u)

The network receives ``guidance = [w, t_min, t_max]`` (``[B, 3]``, keyword input `GUIDANCE_KEY`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from meanflow.methods.base import expand_like

GUIDANCE_KEY = "guidance"
"""Keyword input (``net_kwargs``) carrying ``[w, t_min, t_max]`` per sample, shape ``[B, 3]``."""


def draw_omega(n: int, omega_max: float, beta: float, *, device=None, dtype=torch.float32,
               generator: torch.Generator | None = None) -> Tensor:
    """Training guidance scales ``[n]`` with density ``~ w^-beta`` on ``[1, omega_max]``.

    Inverse CDF of ``u ~ U(0, 1)``: ``w = omega_max^u`` for beta = 1, else
    ``w = (1 + u (omega_max^(1 - beta) - 1))^(1 / (1 - beta))``.
    """
    u = torch.rand(n, device=device, dtype=dtype, generator=generator)
    log_max = math.log(omega_max)
    if beta == 1.0:
        return torch.exp(u * log_max)
    a = 1.0 - beta
    return torch.exp(torch.log1p(u * math.expm1(a * log_max)) / a)


def draw_interval(fm: Tensor, split: float, *, dtype=torch.float32,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Training guidance intervals: ``t_min ~ U(0, s)``, ``t_max ~ U(s, 1)`` with ``s = split``;
    ``[0, 1]`` where ``fm`` (the ``[n]`` mask of r = t samples) is set. Returns ``(t_min, t_max)``,
    each ``[n]``."""
    n, s = fm.shape[0], split
    t_min = s * torch.rand(n, device=fm.device, dtype=dtype, generator=generator)
    t_max = s + (1 - s) * torch.rand(n, device=fm.device, dtype=dtype, generator=generator)
    return torch.where(fm, 0.0, t_min), torch.where(fm, 1.0, t_max)


@torch.no_grad()
def guided_target(net: nn.Module, z: Tensor, t: Tensor, v: Tensor, y: Tensor, omega: Tensor, t_min: Tensor,
                  t_max: Tensor, kw: dict, null_class: int) -> tuple[Tensor, Tensor]:
    """``(v_g, v_c)``, both ``[B, *S]``, no gradient.

    ``w_eff = w`` inside ``[t_min, t_max]`` else 1; ``v_c = v_theta(z, t | y, w_eff, [0, 1])``,
    ``v_u = v_theta(z, t | null, 1, [0, 1])`` (one batched call of ``2B`` rows; the null class id is
    `null_class`) and ``v_g = v + (1 - 1/w_eff) (v_c - v_u)``.
    """
    b = t.shape[0]
    inside = (t >= t_min) & (t <= t_max)
    w_eff = torch.where(inside, omega, torch.ones_like(omega))
    zeros, ones = torch.zeros_like(t), torch.ones_like(t)
    g = torch.cat([torch.stack([w_eff, zeros, ones], 1), torch.stack([ones, zeros, ones], 1)])
    y2 = torch.cat([y, torch.full_like(y, null_class)])
    kw2 = {**repeat_batch(kw, b), GUIDANCE_KEY: g}
    out = net(torch.cat([z, z]), torch.cat([t, t]), torch.cat([zeros, zeros]), y2, **kw2).to(v.dtype)
    v_c, v_u = out[:b], out[b:]
    v_g = v + expand_like(1 - 1 / w_eff, v) * (v_c - v_u)
    return v_g, v_c


def repeat_batch(kw: dict, b: int) -> dict:
    """Network keyword inputs for a doubled batch: per-sample tensors ``[B, ...]`` repeated to
    ``[2B, ...]``, anything else passed unchanged."""
    return {k: torch.cat([a, a]) if isinstance(a, Tensor) and a.ndim > 0 and a.shape[0] == b else a
            for k, a in kw.items()}
