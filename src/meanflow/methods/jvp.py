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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def supports_tangents(net: nn.Module) -> bool:
    """Whether ``net`` (or the module a DDP-style wrapper holds) implements tangent mode."""
    if getattr(net, "supports_tangents", False):
        return True
    inner = getattr(net, "module", None)
    return bool(inner is not None and getattr(inner, "supports_tangents", False))


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

    Returns:
        ``(out, dout)``, both ``[B, *S]``: ``out`` carries the autograd graph to the parameters,
        ``dout`` is detached (it is only ever used inside a stop-gradient target).
    """
    kw = net_kwargs or {}
    if use_tangents is None:
        use_tangents = supports_tangents(net)
    if use_tangents:
        out, dout = net(z, t, h, y, tangents=(dz, dt, dh), **kw)
        return out, dout.detach()

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
        return out, dout

    def f(z_: Tensor, t_: Tensor, h_: Tensor) -> Tensor:
        return net(z_, t_, h_, y, **kw)

    with sdpa_kernel(SDPBackend.MATH):
        out, dout = torch.func.jvp(f, (z, t, h), (dz, dt, dh))
    return out, dout.detach()
