"""The attention tangent: tiled walk == explicit formula == torch.func.jvp, and the dispatch."""

from __future__ import annotations

import pytest
import torch
from netcheck import check_tangent_mode, perturb_

from meanflow.networks import DiT
from meanflow.networks import attention_tangent as A
from meanflow.networks import layers as L


def _qkv(n, m, b=2, h=3, d=8, dtype=torch.float64, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)

    def r(rows):
        return torch.randn(b, h, rows, d, generator=g, dtype=dtype)

    # `spread` scales q so that the softmax is peaked and the running maximum changes across tiles.
    return r(n) * spread, r(m), r(m), r(n), r(m), r(m)


def _jvp(q, k, v, dq, dk, dv):
    def f(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v

    return torch.func.jvp(f, (q, k, v), (dq, dk, dv))


@pytest.mark.parametrize("n,m", [(1, 1), (7, 7), (16, 5), (33, 130), (64, 64)])
@pytest.mark.parametrize("block", [1, 4, 32, 1000])
def test_tiled_equals_explicit_equals_jvp(n, m, block):
    q, k, v, dq, dk, dv = _qkv(n, m, spread=3.0)
    o, do_ref = _jvp(q, k, v, dq, dk, dv)
    do_exp = A.explicit(q, k, v, o, dq, dk, dv)
    do_tiled = A.tiled(q, k, v, o, dq, dk, dv, block=block)
    torch.testing.assert_close(do_exp, do_ref, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(do_tiled, do_ref, rtol=1e-10, atol=1e-11)


def test_tiled_survives_large_scores():
    # Scores ~ 1e3 overflow exp() without the running maximum; the walk must stay finite and exact.
    q, k, v, dq, dk, dv = _qkv(9, 40, spread=300.0, seed=1)
    o, do_ref = _jvp(q, k, v, dq, dk, dv)
    do = A.tiled(q, k, v, o, dq, dk, dv, block=8)
    assert torch.isfinite(do).all()
    torch.testing.assert_close(do, do_ref, rtol=1e-8, atol=1e-8)


def test_tiled_float32_and_bfloat16_close_to_float64():
    q, k, v, dq, dk, dv = _qkv(50, 300)
    o, ref = _jvp(q, k, v, dq, dk, dv)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        args = [x.to(dtype) for x in (q, k, v, o, dq, dk, dv)]
        do = A.tiled(*args, block=64)
        assert do.dtype == dtype
        err = (do.double() - ref).abs().max() / ref.abs().max()
        assert err < tol, (dtype, float(err))


def test_layers_attention_dispatch_and_override():
    q, k, v, dq, dk, dv = _qkv(20, 20)
    o, ref = _jvp(q, k, v, dq, dk, dv)
    for impl in ("auto", "explicit", "tiled"):
        with A.use_impl(impl, block=3):
            o2, do = L.attention(q, k, v, dq, dk, dv)
        torch.testing.assert_close(o2, o, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(do, ref, rtol=1e-10, atol=1e-11)
    assert A._auto(q, torch.zeros(1, 1, A.EXPLICIT_MAX_KEYS, 1)) == "explicit"
    assert A._auto(q, torch.zeros(1, 1, A.EXPLICIT_MAX_KEYS + 1, 1)) == "tiled"
    with pytest.raises(ValueError, match="impl"):
        with A.use_impl("flash"):
            pass


def test_dit_tangent_mode_with_tiled_attention():
    # 16 tokens walked 3 keys at a time: the whole network's tangent still matches torch.func.jvp
    # and finite differences.
    net = perturb_(DiT(input_size=8, in_channels=2, patch_size=2, hidden_size=16, depth=2,
                       num_heads=2, num_classes=4).double())
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand(3, generator=g, dtype=torch.float64)
    with A.use_impl("tiled", block=3):
        check_tangent_mode(net, z, t, t * 0.5, torch.tensor([0, 4, 2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernel runs on CUDA only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])  # the dtypes `auto` sends to it
def test_fused_kernel_equals_tiled_on_cuda(dtype):
    from meanflow.networks.attention_triton import available, fused_tangent

    q, k, v, dq, dk, dv = (x.cuda() for x in _qkv(200, 77, b=2, h=4, d=64))
    o, ref = _jvp(q, k, v, dq, dk, dv)
    args = [x.to(dtype) for x in (q, k, v, o, dq, dk, dv)]
    assert available(args[0])
    do = fused_tangent(*args)
    err = (do.double() - ref).abs().max() / ref.abs().max()
    assert err < 3e-2, float(err)


@pytest.mark.slow
def test_compiled_dit_meanflow_loss_equals_eager():
    # torch.compile of the whole MeanFlow loss through the DiT's tangent mode (the tiled attention
    # tangent included): loss and gradients equal eager. A wrong compiled tangent changes the target,
    # hence the gradients, far beyond these tolerances.
    from meanflow.methods import MeanFlow

    torch.manual_seed(0)
    net = perturb_(DiT(input_size=8, in_channels=2, patch_size=2, hidden_size=32, depth=2, num_heads=2),
                   std=0.05)
    x, noise = torch.randn(4, 2, 8, 8), torch.randn(4, 2, 8, 8)
    t = torch.tensor([0.9, 0.6, 0.4, 0.2])
    r = torch.tensor([0.1, 0.6, 0.0, 0.1])
    results = []
    for compile_ in (False, True):
        with A.use_impl("tiled", block=5):
            out = MeanFlow(compile=compile_).loss(net, x, noise=noise, t=t, r=r)
            grads = torch.autograd.grad(out.loss, list(net.parameters()))
        results.append((out.loss.detach(), grads))
    (le, ge), (lc, gc) = results
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-7)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert max(float(g.abs().max()) for g in ge) > 1e-3
