"""Helpers for the network tests: parameter perturbation, seeded calls, a derivative checker."""

from __future__ import annotations

import torch


def perturb_(net: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter so zero-initialised layers do not hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def seeded(seed: int, fn, *args, **kwargs):
    """Call ``fn`` with a fixed global RNG state (same dropout masks), restoring the state after."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def check_tangent_mode(net, z, t, h, y=None, seed=123, eps=1e-5, fd_tol=1e-7, **kw):
    """Tangent mode vs ``torch.func.jvp`` of the plain forward and a central difference."""
    g = torch.Generator().manual_seed(seed)
    dz = torch.randn(z.shape, generator=g, dtype=z.dtype)
    dt = torch.randn(t.shape, generator=g, dtype=t.dtype)
    dh = torch.randn(h.shape, generator=g, dtype=h.dtype)

    out, dout = seeded(seed, net, z, t, h, y, tangents=(dz, dt, dh), **kw)
    plain = seeded(seed, net, z, t, h, y, **kw)
    ref_out, ref_dout = seeded(
        seed, torch.func.jvp, lambda a, b, c: net(a, b, c, y, **kw), (z, t, h), (dz, dt, dh)
    )
    with torch.no_grad():
        fp = seeded(seed, net, z + eps * dz, t + eps * dt, h + eps * dh, y, **kw)
        fm = seeded(seed, net, z - eps * dz, t - eps * dt, h - eps * dh, y, **kw)
    fd = (fp - fm) / (2 * eps)

    assert out.shape == z.shape and dout.shape == z.shape
    assert out.grad_fn is not None, "primal output must keep its autograd graph"
    assert dout.grad_fn is None and not dout.requires_grad, "tangent must carry no graph"
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    assert dout.abs().max() > 1e-3, "degenerate check: tangent is ~0"
    torch.testing.assert_close(dout, ref_dout, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dout, fd, rtol=fd_tol, atol=fd_tol)
    check_partial_tangents(net, z, t, h, y, (dz, dt, dh), out, dout, seed, **kw)


def check_partial_tangents(net, z, t, h, y, tangents, out, dout, seed, **kw):
    """Tangents of the leading ``n < B`` rows: the same primal, the leading rows of the full tangent."""
    b = z.shape[0]
    assert b >= 2, "use a batch of >= 2 to check partial tangents"
    for n in sorted({1, b // 2, b - 1}):
        part = tuple(a[:n] for a in tangents)
        out_n, dout_n = seeded(seed, net, z, t, h, y, tangents=part, **kw)
        assert dout_n.shape == (n, *z.shape[1:])
        torch.testing.assert_close(out_n, out, rtol=0, atol=0)
        torch.testing.assert_close(dout_n, dout[:n], rtol=1e-12, atol=1e-12)
