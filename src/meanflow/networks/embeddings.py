"""Embeddings of the conditioning inputs: times ``t``, ``h = t - r`` and class labels.

Times are embedded as in the official MeanFlow code: sinusoidal features of the *raw* value
(``t, h`` in ``[0, 1]``, no rescaling to ``[0, 1000]``), then a 2-layer MLP. ``t`` and ``h`` get
separate embedders whose outputs the networks sum. All time embeddings carry tangents:
``d/dt sin(w t) = w cos(w t) dt`` and ``d/dt cos(w t) = -w sin(w t) dt``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from meanflow.networks import layers as L


def sinusoidal(
    x: Tensor, dx: Tensor | None, dim: int, max_period: float = 10000.0, endpoint: bool = False
) -> L.Pair:
    """Sinusoidal features ``[cos(w_i x), sin(w_i x)]`` with ``w_i = max_period^(-i / n)``.

    Args:
        x: scalars ``[B]``.
        dx: their tangents ``[B]`` (or ``[n]``, the leading rows) or None.
        dim: number of features (even).
        max_period: the lowest frequency is ``1 / max_period``.
        endpoint: ``n = dim/2 - 1`` (EDM's ``PositionalEmbedding``) instead of ``n = dim/2``
            (DiT's ``timestep_embedding``).

    Returns:
        ``(emb, demb)``, both ``[B, dim]``; ``demb = [-w sin(w x), w cos(w x)] dx``.
    """
    half = dim // 2
    n = max(half - 1, 1) if endpoint else half
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / n
    ).to(x.dtype)
    arg = x[:, None] * freqs
    cos, sin = torch.cos(arg), torch.sin(arg)
    emb = torch.cat([cos, sin], dim=-1)
    if dx is None:
        return emb, None
    with torch.no_grad():
        wdx = dx[:, None] * freqs
        demb = torch.cat([-L.lead(sin, wdx) * wdx, L.lead(cos, wdx) * wdx], dim=-1)
    return emb, demb


class TimestepEmbedder(nn.Module):
    """Scalar time -> vector: sinusoidal features, then ``Linear -> SiLU -> Linear``.

    Args:
        hidden_size: output width.
        frequency_dim: number of sinusoidal features.
        max_period: see :func:`sinusoidal`.
    """

    def __init__(self, hidden_size: int, frequency_dim: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.fc1 = nn.Linear(frequency_dim, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        nn.init.normal_(self.fc1.weight, std=0.02)
        nn.init.normal_(self.fc2.weight, std=0.02)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, t: Tensor, dt: Tensor | None = None) -> L.Pair:
        """``(t [B], dt [B] | None) -> (emb [B, hidden], demb | None)``."""
        e, de = sinusoidal(t, dt, self.frequency_dim, self.max_period)
        e, de = L.linear(self.fc1, e, de)
        e, de = L.silu(e, de)
        return L.linear(self.fc2, e, de)


class LabelEmbedder(nn.Module):
    """Class id -> vector, with one extra *null* class ``num_classes`` (unconditional).

    Args:
        num_classes: number of real classes; ids run over ``[0, num_classes]``.
        hidden_size: output width.
    """

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden_size)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, y: Tensor | None, batch_size: int, device: torch.device) -> Tensor:
        """``y [B] long`` (or None = all null) -> ``[B, hidden]``. Constant in every tangent."""
        if y is None:
            y = torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device)
        return self.table(y)


def batch_scalar(x: Tensor | float, batch_size: int, like: Tensor) -> Tensor:
    """Broadcast a time or time tangent (python float, 0-d or ``[B]`` tensor) to ``[B]``.

    The result has ``like``'s dtype and device.
    """
    x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if x.dim() == 0:
        x = x.expand(batch_size)
    return x.reshape(batch_size)


def summed_condition(t_embedder, h_embedder, y_embedder, t: Tensor, h: Tensor, y: Tensor | None,
                     dt: Tensor | None, dh: Tensor | None, batch: int,
                     device) -> tuple[Tensor, Tensor | None]:
    """Conditioning vector ``c = E_t(t) + E_h(h) (+ E_y(y))`` ``[B, D]`` and its tangent ``dc``
    (``None`` in plain mode; the class embedding has no tangent). ``y_embedder`` may be None."""
    c, dc = t_embedder(t, dt)
    ch, dch = h_embedder(h, dh)
    c = c + ch
    dc = None if dc is None else dc + dch
    if y_embedder is not None:
        c = c + y_embedder(y, batch, device)
    return c, dc


def block_conditions(t_embedder, h_embedder, y_embedder, t: Tensor, h: Tensor, y: Tensor | None,
                     dt: Tensor | None, dh: Tensor | None, batch: int, device, n: int,
                     decoupled_depth: int = 0) -> tuple[list, list]:
    """Conditioning ``[B, D]`` and tangent of each of ``n`` conditioned layers (blocks, then a final one).

    ``decoupled_depth = 0``: every layer gets ``E_t(t) + E_h(h) (+ E_y(y))``. ``decoupled_depth = k``
    (Decoupled MeanFlow): the first ``k`` get ``E_t(t) + E_h(0) + E_y(y)`` and the rest ``E_t(r) + E_h(0)
    + E_y(y)``, ``r = t - h`` through the same ``E_t``, so that at ``h = 0`` both equal the plain
    network's condition; the tangent of ``r`` is ``dt - dh``.
    """
    if not decoupled_depth:
        c, dc = summed_condition(t_embedder, h_embedder, y_embedder, t, h, y, dt, dh, batch, device)
        return [c] * n, [dc] * n
    zero, dzero = torch.zeros_like(h), None if dh is None else torch.zeros_like(dh)
    enc = summed_condition(t_embedder, h_embedder, y_embedder, t, zero, y, dt, dzero, batch, device)
    dr = None if dt is None else dt - dh
    dec = summed_condition(t_embedder, h_embedder, y_embedder, t - h, zero, y, dr, dzero, batch, device)
    k = decoupled_depth
    return [enc[0]] * k + [dec[0]] * (n - k), [enc[1]] * k + [dec[1]] * (n - k)


class LogVarianceHead(nn.Module):
    """Decoupled MeanFlow's learned log-variance ``lv(t, r) [B]``: a linear map of ``features``
    sinusoidal features each of ``t`` and ``r = t - h``, zero-initialised (``lv = 0`` at the start)."""

    def __init__(self, features: int = 128):
        super().__init__()
        self.features = features
        self.linear = nn.Linear(2 * features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        feats = [sinusoidal(s, None, self.features)[0] for s in (t, t - h)]
        return self.linear(torch.cat(feats, dim=1)).squeeze(1)
