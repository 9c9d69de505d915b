"""MeanFlow's regression target and adaptive-weighted objective, as plain functions of tensors.

With ``h = t - r`` and the JVP tangent ``(v, dr, dt)`` on ``(z, r, t)`` (the identity's is
``(v, 0, 1)``, i.e. ``(v, 1, 1)`` on the network's inputs ``(z, t, h)``)::

    u, du/dt = jvp(u_theta, (z, r, t), (v, dr, dt))
    u_tgt    = sg(v - clip(t - r, 0, 1) du/dt)
    err_i    = ||u_i - u_tgt_i||^2                      (summed over non-batch dims)
    loss     = mean_i beta_i err_i / sg((err_i + c)^p)  (beta = 1 unless Kim et al.'s weight is on)

Kept apart from :class:`~meanflow.methods.meanflow.MeanFlow` (which draws the times, the noise and
the guidance) so that `objective` is one function ``torch.compile`` can build (``compile=True``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from meanflow.methods.base import expand_like, per_sample_sq
from meanflow.methods.jvp import jvp, pad_rows

TANGENTS: dict[str, tuple[float, float]] = {"v01": (0.0, 1.0), "v00": (0.0, 0.0), "v10": (1.0, 0.0),
                                            "v11": (1.0, 1.0)}
"""``tangent`` option -> ``(dr, dt)`` of the JVP tangent ``(v, dr, dt)`` on ``(z, r, t)``."""


def jvp_target(net: nn.Module, z: Tensor, t: Tensor, r: Tensor, v: Tensor, y: Tensor | None,
               net_kwargs: dict | None = None, rows: int | None = None,
               tangent: tuple[float, float] = (0.0, 1.0)) -> tuple[Tensor, Tensor]:
    """``u, du/dt = jvp(u_theta, (z, r, t), (v, dr, dt))``; ``u_tgt = v - clip(t - r, 0, 1) du/dt``.

    ``z, v [B, *S]``, ``t, r [B]``. ``tangent = (dr, dt)``: ``(0, 1)`` is the MeanFlow identity's; on
    the network's inputs ``(z, t, h = t - r)`` it is ``(v, dt, dt - dr)``. With ``rows = n`` the rows
    from ``n`` on must have ``r = t``: their target is ``v`` and their tangent is not computed.

    Returns:
        ``(u, u_tgt)``: prediction with graph and detached target, both ``[B, *S]``.
    """
    h = t - r
    dr, dt = tangent
    ones = torch.ones_like(t)
    u, dudt = jvp(net, z, t, h, y, v, ones * dt, ones * (dt - dr), net_kwargs=net_kwargs, rows=rows)
    u_tgt = v - expand_like(h.clamp(0, 1), v) * pad_rows(dudt, v.shape[0])
    return u, u_tgt.detach()


def objective(net, z, t, r, v, y, norm_p: float, norm_eps: float, net_kwargs: dict | None = None,
              rows: int | None = None, jvp_autocast: bool = False,
              tangent: tuple[float, float] = (0.0, 1.0), beta: Tensor | None = None):
    """Adaptive-weighted MeanFlow loss, float32 (or float64) with autocast off (the JVP too, unless
    ``jvp_autocast``: then it runs under the caller's autocast). ``beta [B]`` (optional) multiplies each
    row's loss after the adaptive normalisation.

    Returns:
        ``(loss, err, u)``: scalar loss, per-sample squared error ``[B]``, prediction ``[B, *S]``.
    """
    no_autocast = torch.autocast(device_type=z.device.type, enabled=False)
    with contextlib.nullcontext() if jvp_autocast else no_autocast:
        u, u_tgt = jvp_target(net, z, t, r, v, y, net_kwargs, rows, tangent)
    with torch.autocast(device_type=z.device.type, enabled=False):
        u, u_tgt = u.to(z.dtype), u_tgt.to(z.dtype)
        err = per_sample_sq(u - u_tgt)
        weight = (err.detach() + norm_eps).pow(norm_p)  # stop-gradient adaptive weight
        per_row = err / weight
        loss = (per_row if beta is None else beta.to(per_row.dtype) * per_row).mean()
    return loss, err, u


_COMPILED = None


def compiled_objective():
    """``torch.compile(objective)``, built once per process (Dynamo guards handle new nets)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(objective)
    return _COMPILED
