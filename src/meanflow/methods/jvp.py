"""One Jacobian-vector product of a network, by the fastest route it supports.

For ``out = net(z, t, h, y)`` and a tangent ``(dz, dt, dh)`` this returns ``out`` and

    dout = d/de net(z + e dz, t + e dt, h + e dh, y)  at e = 0.

MeanFlow needs ``du/dt`` along the tangent ``(v, 0, 1)`` on ``(z, r, t)``; since networks take
``h = t - r``, that is ``(dz, dt, dh) = (v, 1, 1)`` on ``(z, t, h)``.

Routes:

1. **Tangent mode** (``supports_tangents`` on the network, or on ``net.module`` for a DDP
   wrapper): one call ``net(z, t, h, y, tangents=(dz, dt, dh))``; the network computes ``dout``
   without an autograd graph, at about the cost of one extra forward.
2. **Fallback**: ``torch.func.jvp`` over ``net`` with the math SDPA backend, because the fused
   attention kernels have no forward-mode derivative.
3. **Fallback for a wrapper** (an object with ``.module``, e.g. DDP): ``torch.func.jvp`` cannot
   run through DDP more than once (measured, torch 2.13 CPU/gloo: the second iteration's
   ``reducer._rebuild_buckets()`` fails on the functorch-wrapped tensors: "Cannot access data
   pointer of Tensor that doesn't have storage"). So the primal is an ordinary call of the wrapper
   (graph, DDP hooks) and the tangent is ``torch.func.jvp`` over ``.module`` under ``no_grad``
   (no gradient, so no all-reduce is needed), replaying the RNG state so dropout masks match.

All routes take the trained output from a call of the object they are given (the DDP wrapper, not
``.module``): calling only the inner module would skip DDP's gradient all-reduce hooks and let
replicas drift silently.

**Partial tangents.** With ``rows=n`` only the leading ``n`` rows of ``dout`` are wanted (MeanFlow:
the rows with ``r != t``; the others have ``t - r = 0`` and the tangent drops out of the target).
Networks with ``supports_partial_tangents`` then get tangents of ``n`` rows and compute them at
``n / B`` of the cost; the other routes compute every row and return the leading ``n``. `lead_rows`
and `take_rows` put the wanted rows first.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from meanflow.errors import UserError


def _flag(net: nn.Module, name: str) -> bool:
    """A network attribute, looked up on ``net`` or on the module a DDP-style wrapper holds."""
    if getattr(net, name, False):
        return True
    inner = getattr(net, "module", None)
    return bool(inner is not None and getattr(inner, name, False))


def supports_partial_tangents(net: nn.Module) -> bool:
    """Whether ``net`` (or the module a wrapper holds) takes tangents of only the leading rows."""
    return _flag(net, "supports_partial_tangents")


def lead_rows(wanted: Tensor) -> tuple[Tensor | None, int]:
    """A row order that puts the ``wanted`` rows (boolean ``[B]``) first, and their count ``n``.

    Returns ``(None, n)`` when they already lead (no reordering needed), else ``(order, n)`` with
    ``order [B]`` a permutation (stable: wanted rows, then the others, each in their order).
    One host sync (``n`` is a Python int: it sizes the tangent).
    """
    w = wanted.to(torch.int8)
    n, leading = torch.stack([w.sum(), (w[1:] <= w[:-1]).all()]).tolist()  # one sync
    if leading:
        return None, int(n)
    return torch.argsort((~wanted).to(torch.uint8), stable=True), n


def moving_rows(net: nn.Module, t: Tensor, r: Tensor) -> tuple[Tensor | None, int | None]:
    """`lead_rows` of the ``r != t`` rows (the only ones whose ``du/dt`` enters a MeanFlow-type
    target) for networks that take partial tangents; ``(None, None)`` (all rows, as given) otherwise."""
    if not supports_partial_tangents(net):
        return None, None
    return lead_rows(r != t)


def take_rows(order: Tensor | None, b: int, *items):
    """Each item reordered by ``order`` along its batch axis: tensors whose first size is ``b``,
    dicts of them (e.g. ``net_kwargs``); anything else (None, scalars) unchanged."""

    def take(x):
        if order is None:
            return x
        if isinstance(x, dict):
            return {k: take(v) for k, v in x.items()}
        if isinstance(x, Tensor) and x.dim() and x.shape[0] == b:
            return x.index_select(0, order)
        return x

    return tuple(take(x) for x in items)


JVP_PRECISIONS = ("float32", "autocast")
"""``jvp_precision`` of MeanFlow and iMF: the published float32 JVP, or the caller's autocast."""


def check_jvp_precision(value: str) -> None:
    """One-line `UserError` unless ``value`` is one of `JVP_PRECISIONS`."""
    if value not in JVP_PRECISIONS:
        raise UserError(f"jvp_precision must be one of {', '.join(JVP_PRECISIONS)}, got {value!r}")


def caller_autocast(device_type: str):
    """A context manager that re-enters the autocast state active *now* (enabled flag and dtype), for
    code that later runs inside an ``autocast(enabled=False)`` block but must follow the caller's."""
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                          enabled=torch.is_autocast_enabled(device_type))


def supports_tangents(net: nn.Module) -> bool:
    """Whether ``net`` (or the module a DDP-style wrapper holds) implements tangent mode."""
    return _flag(net, "supports_tangents")


def jvp(
    net: nn.Module,
    z: Tensor,
    t: Tensor,
    h: Tensor,
    y: Tensor | None,
    dz: Tensor,
    dt: Tensor,
    dh: Tensor,
    *,
    use_tangents: bool | None = None,
    net_kwargs: dict | None = None,
    rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Network output and its directional derivative along ``(dz, dt, dh)``.

    Args:
        net: Network ``net(z, t, h, y) -> [B, *S]``, possibly wrapped (DDP); always called directly.
        z: Noisy input ``[B, *S]``.
        t: Time ``[B]``.
        h: Interval ``t - r``, ``[B]``.
        y: Class ids ``[B]`` or ``None`` (no tangent: labels are discrete).
        dz: Tangent of ``z``, ``[B, *S]``.
        dt: Tangent of ``t``, ``[B]``.
        dh: Tangent of ``h``, ``[B]``.
        use_tangents: Force (True) or forbid (False) the tangent-mode route; ``None`` picks it when
            the network supports it.
        net_kwargs: Extra keyword inputs of the network (e.g. ``augment_labels``), passed unchanged
            to every call on every route; they get no tangent.
        rows: Only the leading ``rows`` rows of ``dout`` are wanted (``None``: all ``B``). The
            tangents may have ``B`` rows or just those.

    Returns:
        ``(out, dout)``: ``out [B, *S]`` carries the autograd graph to the parameters, ``dout
        [rows, *S]`` is detached (it is only ever used inside a stop-gradient target).
    """
    kw = net_kwargs or {}
    b = z.shape[0]
    rows = b if rows is None else rows
    if not 0 <= rows <= b:
        raise ValueError(f"rows must be in [0, {b}], got {rows}")
    if use_tangents is None:
        use_tangents = supports_tangents(net)
    if rows == 0:  # nothing to differentiate: one plain call
        out = net(z, t, h, y, **kw)
        return out, out.new_empty((0, *out.shape[1:]))
    if use_tangents and rows < b and supports_partial_tangents(net):
        out, dout = net(z, t, h, y, tangents=(dz[:rows], dt[:rows], dh[:rows]), **kw)
        return out, dout.detach()
    dz, dt, dh = (pad_rows(a, b) for a in (dz, dt, dh))
    if use_tangents:
        out, dout = net(z, t, h, y, tangents=(dz, dt, dh), **kw)
        return out, dout.detach()[:rows]

    inner = getattr(net, "module", None)
    if isinstance(inner, nn.Module):
        cuda = z.device.type == "cuda"
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(z.device) if cuda else None
        out = net(z, t, h, y, **kw)
        # Replay the same random draws (dropout masks) for the tangent; afterwards the RNG has
        # advanced exactly as after one forward.
        torch.set_rng_state(cpu_state)
        if cuda:
            torch.cuda.set_rng_state(cuda_state, z.device)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            _, dout = torch.func.jvp(lambda *a: inner(*a, y, **kw), (z, t, h), (dz, dt, dh))
        return out, dout[:rows]

    def f(z_: Tensor, t_: Tensor, h_: Tensor) -> Tensor:
        return net(z_, t_, h_, y, **kw)

    with sdpa_kernel(SDPBackend.MATH):
        out, dout = torch.func.jvp(f, (z, t, h), (dz, dt, dh))
    return out, dout.detach()[:rows]


def pad_rows(x: Tensor, b: int) -> Tensor:
    """``x`` given for the leading rows, zero-padded to ``b`` rows (e.g. a partial tangent for a
    route that computes every row, or ``du/dt`` where the missing rows have ``t - r = 0``)."""
    if x.shape[0] == b:
        return x
    return torch.cat([x, x.new_zeros((b - x.shape[0], *x.shape[1:]))])
