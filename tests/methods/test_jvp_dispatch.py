"""The JVP helper: tangent mode and torch.func.jvp agree, match finite differences, call the wrapper."""

import pytest
import torch
from method_testnets import AttnNet, TinyNet, Wrapper

from meanflow.methods.jvp import jvp, supports_tangents


def _inputs(b=5, shape=(3,), dtype=torch.float64):
    z = torch.randn(b, *shape, dtype=dtype)
    t = torch.rand(b, dtype=dtype) * 0.8 + 0.1
    r = t * torch.rand(b, dtype=dtype)
    v = torch.randn(b, *shape, dtype=dtype)
    return z, t, r, v


def _central_fd(net, z, t, r, v, eps=1e-5):
    """d/de u(z + e v, r, t + e) by a float64 central difference (h = t - r moves with t)."""
    def u(e):
        return net(z + e * v, t + e, (t + e) - r)
    with torch.no_grad():
        return (u(eps) - u(-eps)) / (2 * eps)


@pytest.mark.parametrize("use_tangents", [True, False])
def test_jvp_matches_central_finite_difference(use_tangents):
    net = TinyNet(shape=(3,), hidden=16, num_classes=0, tangent_mode=True).double()
    z, t, r, v = _inputs()
    ones = torch.ones_like(t)
    out, dout = jvp(net, z, t, t - r, None, v, ones, ones, use_tangents=use_tangents)
    torch.testing.assert_close(dout, _central_fd(net, z, t, r, v), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(out, net(z, t, t - r), rtol=0, atol=0)
    assert out.requires_grad and not dout.requires_grad


def test_tangent_mode_equals_func_jvp_with_classes():
    net = TinyNet(shape=(2, 3), hidden=16, depth=3, num_classes=4, tangent_mode=True).double()
    z, t, r, v = _inputs(shape=(2, 3))
    y = torch.tensor([0, 1, 2, 3, 4])
    dt, dh = torch.rand_like(t), torch.rand_like(t)
    out_a, dout_a = jvp(net, z, t, t - r, y, v, dt, dh, use_tangents=True)
    out_b, dout_b = jvp(net, z, t, t - r, y, v, dt, dh, use_tangents=False)
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(dout_a, dout_b)
    # The primal of both routes trains the same way.
    ga = torch.autograd.grad(out_a.sum(), list(net.parameters()))
    gb = torch.autograd.grad(out_b.sum(), list(net.parameters()))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("tangent_mode", [True, False])
def test_jvp_calls_the_wrapper_not_the_module(tangent_mode):
    inner = TinyNet(shape=(3,), hidden=8, tangent_mode=tangent_mode).double()
    net = Wrapper(inner)
    assert supports_tangents(net) is tangent_mode
    z, t, r, v = _inputs()
    ones = torch.ones_like(t)
    out, dout = jvp(net, z, t, t - r, None, v, ones, ones)
    assert net.calls == 1
    torch.testing.assert_close(dout, _central_fd(inner, z, t, r, v), rtol=1e-7, atol=1e-8)


def test_fallback_runs_through_sdpa_attention():
    # Fused SDPA kernels have no forward-mode AD; the helper must switch to the math backend.
    net = AttnNet(dim=8).double()
    z = torch.randn(3, 4, 8, dtype=torch.float64)
    t = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    r = torch.tensor([0.1, 0.6, 0.2], dtype=torch.float64)
    v = torch.randn_like(z)
    ones = torch.ones_like(t)
    _, dout = jvp(net, z, t, t - r, None, v, ones, ones)
    torch.testing.assert_close(dout, _central_fd(net, z, t, r, v), rtol=1e-7, atol=1e-8)


def test_wrapper_fallback_keeps_dropout_masks():
    """Wrapped, no tangent mode: primal and tangent are two calls; they must see the same masks."""
    inner = TinyNet(shape=(3,), hidden=32, depth=3, dropout=0.5).double().train()
    z, t, r, v = _inputs()
    ones = torch.ones_like(t)
    torch.manual_seed(5)
    out, dout = jvp(Wrapper(inner), z, t, t - r, None, v, ones, ones)
    after = torch.rand(1)

    def u(e):
        torch.manual_seed(5)
        return inner(z + e * v, t + e, t + e - r)

    with torch.no_grad():
        fd = (u(1e-5) - u(-1e-5)) / 2e-5
        torch.testing.assert_close(out, u(0.0))
    torch.testing.assert_close(dout, fd, rtol=1e-7, atol=1e-8)
    torch.manual_seed(5)
    inner(z, t, t - r)
    assert torch.equal(torch.rand(1), after)  # the RNG advanced as after one forward
