"""Each tangent-aware layer: ``dy`` equals ``torch.func.jvp`` of its own primal (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad

from meanflow.networks import layers as L

torch_dtype = torch.float64


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch_dtype)


def _check(fn, *xs):
    """``fn(*xs, *dxs) -> (y, dy)``; compare ``dy`` with the JVP of the primal ``fn(*xs, None...)``."""
    dxs = tuple(_rand(*x.shape, seed=i + 10) for i, x in enumerate(xs))
    y, dy = fn(*xs, *dxs)
    y_ref, dy_ref = torch.func.jvp(lambda *a: fn(*a, *([None] * len(a)))[0], xs, dxs)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dy, dy_ref, rtol=1e-10, atol=1e-10)
    assert dy.abs().max() > 1e-6


def test_linear_and_conv():
    lin = nn.Linear(5, 7).double()
    _check(lambda x, dx: L.linear(lin, x, dx), _rand(3, 4, 5))
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2).double()
    _check(lambda x, dx: L.conv2d(conv, x, dx), _rand(2, 3, 8, 8))


@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm(affine):
    w, b = (_rand(6, seed=1), _rand(6, seed=2)) if affine else (None, None)
    _check(lambda x, dx: L.layer_norm(x, dx, w, b, eps=1e-6), _rand(2, 3, 6))


def test_layer_norm_matches_torch():
    x = _rand(2, 3, 6)
    y, _ = L.layer_norm(x, None, eps=1e-5)
    torch.testing.assert_close(y, F.layer_norm(x, (6,), eps=1e-5))


def test_group_norm_matches_torch_and_tangent():
    gn = L.GroupNorm(8, eps=1e-5).double()
    with torch.no_grad():
        gn.weight.copy_(_rand(8, seed=3))
        gn.bias.copy_(_rand(8, seed=4))
    x = _rand(2, 8, 4, 4)
    ref = F.group_norm(x, gn.num_groups, gn.weight, gn.bias, gn.eps)
    torch.testing.assert_close(gn(x)[0], ref)
    assert gn.num_groups == 2  # min(32, C // 4)
    _check(lambda x, dx: gn(x, dx), x)


@pytest.mark.parametrize("fn", [L.silu, L.gelu_tanh, L.upsample, L.downsample])
def test_pointwise_and_resampling(fn):
    _check(fn, _rand(2, 3, 4, 4))


def test_gelu_and_silu_match_torch():
    x = _rand(50)
    torch.testing.assert_close(L.gelu_tanh(x)[0], F.gelu(x, approximate="tanh"))
    torch.testing.assert_close(L.silu(x)[0], F.silu(x))


def test_modulate_and_mul():
    x, shift, scale = _rand(2, 5, 4), _rand(2, 1, 4, seed=1), _rand(2, 1, 4, seed=2)
    _check(lambda x, s, c, dx, ds, dc: L.modulate(x, dx, s, ds, c, dc), x, shift, scale)
    _check(lambda a, b, da, db: L.mul(a, da, b, db), shift, x)


def test_dropout_same_mask_on_primal_and_tangent():
    x = _rand(4, 100)
    torch.manual_seed(0)
    y, dy = L.dropout(x, torch.ones_like(x), 0.5, training=True)
    kept = y != 0
    assert 0.3 < kept.double().mean() < 0.7
    torch.testing.assert_close(dy[kept], torch.full_like(dy[kept], 2.0))
    assert (dy[~kept] == 0).all()
    torch.manual_seed(0)
    torch.testing.assert_close(L.dropout(x, None, 0.5, training=True)[0], y)
    # eval mode and p = 0 are the identity
    assert L.dropout(x, None, 0.5, training=False)[0] is x


@pytest.mark.parametrize("n,m", [(5, 5), (3, 6)])
def test_attention_tangent(n, m):
    q, k, v = _rand(2, 3, n, 4, seed=1), _rand(2, 3, m, 4, seed=2), _rand(2, 3, m, 4, seed=3)
    _check(lambda q, k, v, dq, dk, dv: L.attention(q, k, v, dq, dk, dv), q, k, v)
    ref = torch.softmax(q @ k.transpose(-2, -1) / 2.0, -1) @ v
    torch.testing.assert_close(L.attention(q, k, v)[0], ref)


def test_attention_plain_path_works_under_forward_ad():
    """Fused SDPA has no forward-AD rule; the plain path must switch to the explicit formula."""
    q, k, v = _rand(1, 2, 4, 8, seed=1), _rand(1, 2, 4, 8, seed=2), _rand(1, 2, 4, 8, seed=3)
    dq = _rand(1, 2, 4, 8, seed=4)
    _, d_func = torch.func.jvp(lambda q: L.attention(q, k, v)[0], (q,), (dq,))
    with forward_ad.dual_level():
        o = L.attention(forward_ad.make_dual(q, dq), k, v)[0]
        d_dual = forward_ad.unpack_dual(o).tangent
    zero = torch.zeros_like(q)
    _, d_mode = L.attention(q, k, v, dq, zero, zero)
    torch.testing.assert_close(d_func, d_mode)
    torch.testing.assert_close(d_dual, d_mode)


@pytest.mark.parametrize("fn", [
    lambda x, dx: L.layer_norm(x, dx),
    lambda x, dx: L.group_norm(x, dx, 2),
    L.silu,
    L.gelu_tanh,
])
@pytest.mark.parametrize("primal, tangent", [(torch.float32, torch.bfloat16),
                                             (torch.bfloat16, torch.float32)])
def test_tangents_of_mixed_precision(fn, primal, tangent):
    """Under GPU autocast a primal and its tangent can come out of different kernels in different
    dtypes (float32 from a norm, bf16 from a convolution); the tangent then follows the primal's."""
    g = torch.Generator().manual_seed(0)
    x, dx = torch.randn(3, 4, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    _, ref = fn(x, dx)
    y, dy = fn(x.to(primal), dx.to(tangent))
    assert dy.dtype == y.dtype  # the primal's output dtype (float32 for group_norm, else the input's)
    torch.testing.assert_close(dy.float(), ref, rtol=0.05, atol=0.05)


def test_group_norm_statistics_in_float32_under_cuda_like_autocast():
    """CUDA autocast runs ``rsqrt`` in float32 on bf16 inputs (CPU autocast does not): emulate it by
    patching rsqrt, and check that the primal and tangent still agree with float32 ones."""
    g = torch.Generator().manual_seed(0)
    x, dx = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 8, 4, 4, generator=g)
    y_ref, dy_ref = L.group_norm(x, dx, 2)
    rsqrt = torch.rsqrt
    try:
        torch.rsqrt = lambda a: rsqrt(a.float())
        y, dy = L.group_norm(x.bfloat16(), dx.bfloat16(), 2)
    finally:
        torch.rsqrt = rsqrt
    assert y.dtype == dy.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=0.03, atol=0.03)
    torch.testing.assert_close(dy, dy_ref, rtol=0.05, atol=0.05)
