"""Tiny networks with the project signature ``net(z, t, h, y=None, tangents=None)`` for method tests.

They stand in for ``meanflow.networks`` so the methods can be tested on their own:

* :class:`TinyNet`: MLP on ``[z, Fourier(t), Fourier(h)]`` plus a class embedding; with
  ``tangent_mode=True`` it implements the tangent mode by hand (forward-mode rules for Linear and
  SiLU), so the JVP dispatch can be checked against ``torch.func.jvp`` on the same weights.
* :class:`AttnNet`: one self-attention layer through ``F.scaled_dot_product_attention``.
* :class:`Wrapper`: a DDP-like wrapper exposing ``.module`` and counting calls.
* :class:`SpyNet`: records every ``(t, h, y)`` it is called with.
* :class:`GaussianMeanFlow`: the exact average velocity for Gaussian data (an analytic "network").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FREQS = (1.0, 2.0, 4.0)


def _fourier(s, ds=None):
    """Features ``[sin(w s), cos(w s)]`` of a ``[B]`` tensor and (optionally) their tangent."""
    w = torch.tensor(FREQS, dtype=s.dtype, device=s.device)
    a = s[:, None] * w
    f = torch.cat([torch.sin(a), torch.cos(a)], dim=1)
    if ds is None:
        return f, None
    da = ds[:, None] * w
    return f, torch.cat([torch.cos(a) * da, -torch.sin(a) * da], dim=1)


class TinyNet(nn.Module):
    """MLP ``[B, *S] -> [B, *S]`` conditioned on (t, h, y); optional hand-written tangent mode."""

    def __init__(self, shape=(2,), hidden=32, depth=2, num_classes=0, tangent_mode=False, dropout=0.0):
        super().__init__()
        self.shape = tuple(shape)
        dim = math.prod(self.shape)
        feats = dim + 4 * len(FREQS)
        self.inp = nn.Linear(feats, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim)
        self.num_classes = num_classes
        self.emb = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.dropout = dropout
        self.supports_tangents = tangent_mode

    def _features(self, z, t, h, dz=None, dt=None, dh=None):
        ft, dft = _fourier(t, dt)
        fh, dfh = _fourier(h, dh)
        f = torch.cat([z.flatten(1), ft, fh], dim=1)
        if dz is None:
            return f, None
        return f, torch.cat([dz.flatten(1), dft, dfh], dim=1)

    def _embed(self, y, b, device):
        if self.emb is None:
            return 0.0
        if y is None:
            y = torch.full((b,), self.num_classes, dtype=torch.long, device=device)
        return self.emb(y)

    def forward(self, z, t, h, y=None, tangents=None):
        if tangents is not None:
            if not self.supports_tangents:
                raise TypeError("tangent mode not supported")
            return self._forward_tangent(z, t, h, y, *tangents)
        f, _ = self._features(z, t, h)
        a = F.silu(self.inp(f) + self._embed(y, z.shape[0], z.device))
        for lin in self.hidden:
            a = F.silu(lin(a))
            a = F.dropout(a, self.dropout, self.training)
        return self.out(a).reshape(z.shape)

    def _forward_tangent(self, z, t, h, y, dz, dt, dh):
        # Primal with graph; tangent without, reusing the primal's intermediate values.
        f, _ = self._features(z, t, h)
        with torch.no_grad():
            _, df = self._features(z.detach(), t, h, dz, dt, dh)
        pre = self.inp(f) + self._embed(y, z.shape[0], z.device)
        with torch.no_grad():
            dpre = F.linear(df, self.inp.weight)
        a, da = _silu_pair(pre, dpre)
        for lin in self.hidden:
            pre = lin(a)
            with torch.no_grad():
                dpre = F.linear(da, lin.weight)
            a, da = _silu_pair(pre, dpre)
            if self.dropout > 0 and self.training:
                mask = F.dropout(torch.ones_like(a), self.dropout, True)
                a, da = a * mask, da * mask
        out = self.out(a)
        with torch.no_grad():
            dout = F.linear(da, self.out.weight)
        return out.reshape(z.shape), dout.reshape(z.shape)


def _silu_pair(pre, dpre):
    a = F.silu(pre)
    with torch.no_grad():
        s = torch.sigmoid(pre)
        da = (s * (1 + pre * (1 - s))) * dpre
    return a, da


class AttnNet(nn.Module):
    """One attention layer on ``z`` of shape ``[B, N, D]`` via SDPA, conditioned on (t, h)."""

    supports_tangents = False

    def __init__(self, dim=8):
        super().__init__()
        self.cond = nn.Linear(4 * len(FREQS), dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, z, t, h, y=None):
        c = self.cond(torch.cat([_fourier(t)[0], _fourier(h)[0]], dim=1))
        x = z + c[:, None, :]
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        return self.proj(a) + x


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: holds ``.module`` and counts its own calls."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


class SpyNet(nn.Module):
    """Returns ``scale * z`` and records the ``(t, h, y, tangents given)`` of every call."""

    def __init__(self, scale=0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.calls = []

    def forward(self, z, t, h, y=None, tangents=None):
        self.calls.append((t.detach().clone(), h.detach().clone(), None if y is None else y.clone()))
        return self.scale * z


class GaussianMeanFlow(nn.Module):
    """Exact average velocity for data ``x ~ N(mu, s^2 I)`` on the path ``z_t = (1 - t) x + t e``.

    The marginal at t is ``N((1 - t) mu, sigma_t^2 I)`` with ``sigma_t^2 = (1 - t)^2 s^2 + t^2``. Its
    probability-flow trajectories keep the standardised coordinate fixed, so the flow map from t
    to r is affine in z::

        Phi_{t->r}(z) = (1 - r) mu + (sigma_r / sigma_t) (z - (1 - t) mu)
        u(z, r, t)    = (z - Phi_{t->r}(z)) / (t - r)
        v(z, t)       = -mu + (sigma_t' / sigma_t) (z - (1 - t) mu),  sigma_t' = (t - (1 - t) s^2) / sigma_t

    (``v`` is the limit r -> t, returned where h = 0).
    """

    def __init__(self, mu, s):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.s = float(s)

    def sigma(self, t):
        return torch.sqrt((1 - t) ** 2 * self.s**2 + t**2)

    def velocity(self, z, t):
        tb = t.reshape(-1, *([1] * (z.ndim - 1)))
        sig = self.sigma(tb)
        dsig = (tb - (1 - tb) * self.s**2) / sig
        return -self.mu + dsig / sig * (z - (1 - tb) * self.mu)

    def forward(self, z, t, h, y=None):
        tb = t.reshape(-1, *([1] * (z.ndim - 1)))
        hb = h.reshape(-1, *([1] * (z.ndim - 1)))
        rb = tb - hb
        phi = (1 - rb) * self.mu + self.sigma(rb) / self.sigma(tb) * (z - (1 - tb) * self.mu)
        safe_h = torch.where(hb > 0, hb, torch.ones_like(hb))
        u = (z - phi) / safe_h
        return torch.where(hb > 0, u, self.velocity(z, t))
