"""Improved MeanFlow's velocity-space objective, given its inputs and its target.

With ``h = t - r``, the JVP tangent ``(v_c, 0, 1)`` on ``(z, r, t)`` (``(v_c, 1, 1)`` on the
network's ``(z, t, h)``) and ``sg`` the stop-gradient::

    u, du/dt = jvp(u_theta, (z, t, h), (v_c, 1, 1))
    V        = u + h sg(du/dt)                              (the compound velocity)
    v_pred   = u_theta(z, t, h = 0)                         (the auxiliary velocity, when lambda_v > 0)
    loss     = mean_i ||V - v_g||^2 / sg((||V - v_g||^2 + c)^p)
                    + lambda_v ||v_pred - v_g||^2 / sg((||v_pred - v_g||^2 + c)^p)

Both network outputs come from one call of a ``2B`` batch, so a DDP wrapper sees one forward per
step. :class:`~meanflow.methods.improved_meanflow.ImprovedMeanFlow` draws the times, the noise and
the guidance, builds ``v_c`` and ``v_g`` and calls these two functions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from meanflow.methods.base import expand_like, per_sample_sq
from meanflow.methods.imf_guidance import repeat_batch
from meanflow.methods.jvp import jvp


def forward_pair(net: nn.Module, z: Tensor, t: Tensor, h: Tensor, y: Tensor | None, v_c: Tensor, kw: dict,
                 rows: int | None = None, with_velocity: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(u, du/dt, v_pred)`` from one network call (so a DDP wrapper sees one forward per step).

    ``u, du/dt = jvp(u_theta, (z, t, h), (v_c, 1, 1))`` (tangent ``(v_c, 0, 1)`` on ``(z, r, t)``)
    and, with `with_velocity`, ``v_pred = u_theta(z, t, h = 0)`` with graph, evaluated as the
    second half of a ``2B`` batch whose tangent is not computed. ``v_pred`` is None otherwise.
    All ``[B, *S]`` in ``z``'s dtype, except ``du/dt``: detached, ``[rows, *S]`` (the leading rows;
    all ``B`` when ``rows`` is None).
    """
    dtype = z.dtype
    ones = torch.ones_like(t)
    if not with_velocity:
        u, dudt = jvp(net, z, t, h, y, v_c, ones, ones, net_kwargs=kw, rows=rows)
        return u.to(dtype), dudt.to(dtype), None
    b = t.shape[0]
    zeros = torch.zeros_like(t)
    out, dout = jvp(net, torch.cat([z, z]), torch.cat([t, t]), torch.cat([h, zeros]),
                    None if y is None else torch.cat([y, y]),
                    torch.cat([v_c, torch.zeros_like(v_c)]), torch.cat([ones, zeros]),
                    torch.cat([ones, zeros]), net_kwargs=repeat_batch(kw, b),
                    rows=b if rows is None else rows)
    out, dout = out.to(dtype), dout.to(dtype)
    return out[:b], dout[:b], out[b:]


def weighted_errors(u: Tensor, dudt: Tensor, v_pred: Tensor | None, h: Tensor, v_g: Tensor, norm_p: float,
                    norm_eps: float, v_weight: float) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(loss, err_u [B], err_v [B] or None)``: ``err_u = ||u + h du/dt - v_g||^2``, ``err_v =
    ||v_pred - v_g||^2`` (None without `v_pred`) and the adaptive-weighted ``loss`` of the module
    docstring (``du/dt [B, *S]``, zero past the differentiated rows; ``h [B]``)."""
    compound = u + expand_like(h, u) * dudt
    err_u = per_sample_sq(compound - v_g)
    total = err_u / (err_u.detach() + norm_eps).pow(norm_p)
    err_v = None
    if v_pred is not None:
        err_v = per_sample_sq(v_pred - v_g)
        total = total + v_weight * err_v / (err_v.detach() + norm_eps).pow(norm_p)
    return total.mean(), err_u, err_v
