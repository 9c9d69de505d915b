"""The pixel-MeanFlow DiT: tangent mode of the network and of each of its blocks (against
``torch.func.jvp`` and central differences in float64), the u/v heads, the official RoPE-2d layout,
zero init, options, sizes and parameter counts."""

from __future__ import annotations

import inspect

import pytest
import torch
from netcheck import check_tangent_mode, perturb_, seeded

from meanflow.errors import UserError
from meanflow.networks import NETWORKS, PMFDiT, build_network
from meanflow.networks.imf_dit import rope_angles
from meanflow.networks.imf_layers import RoPEAttention, SwiGLU, rms_norm, rotate

D64 = torch.float64
Y = torch.tensor([0, 10, 7])  # 10 = the null class
G = torch.tensor([[1.0, 0.0, 1.0], [3.5, 0.2, 0.7], [8.0, 0.4, 0.65]], dtype=D64)


def tiny(**kw):
    cfg = dict(input_size=8, in_channels=3, patch_size=2, hidden_size=16, depth=2, num_heads=2,
               num_classes=10, bottleneck=6, aux_head_depth=1, frequency_dim=16)
    cfg.update(kw)
    return PMFDiT(**cfg)


def _inputs(b=3, dtype=D64, c=3):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(b, c, 8, 8, generator=g, dtype=dtype)
    t = torch.rand(b, generator=g, dtype=dtype)
    return z, t, t * torch.rand(b, generator=g, dtype=dtype)


def _jvp_and_fd(f, x, dx, eps=1e-6):
    """``(f(x), J dx)`` by torch.func.jvp and by a central difference."""
    out, ref = torch.func.jvp(f, (x,), (dx,))
    with torch.no_grad():
        fd = (f(x + eps * dx) - f(x - eps * dx)) / (2 * eps)
    return out, ref, fd


@pytest.mark.parametrize("head,guidance_cond,train", [("u", True, True), ("v", True, False),
                                                      ("u", False, False), ("v", False, True)])
def test_tangent_mode_matches_jvp_and_finite_differences(head, guidance_cond, train):
    net = perturb_(tiny(guidance_cond=guidance_cond).double(), std=0.1)
    net.train(train)
    kw = dict(guidance=G) if guidance_cond else {}
    check_tangent_mode(net, *_inputs(), Y, head=head, **kw)


def test_unconditional_tangent_mode_and_no_v_head():
    net = perturb_(tiny(num_classes=0, aux_head_depth=0).double(), std=0.1)
    check_tangent_mode(net, *_inputs(), None)
    with pytest.raises(UserError, match="aux_head_depth is 0"):
        net(*_inputs(), None, head="v")


def test_uv_head_is_both_heads_in_one_pass_with_the_u_tangent():
    net = perturb_(tiny(guidance_cond=True).double(), std=0.1)
    z, t, h = _inputs()
    dz = torch.randn_like(z)
    u, du = net(z, t, h, Y, guidance=G, tangents=(dz, 1.0, 1.0))
    v = net(z, t, h, Y, guidance=G, head="v")
    both, dboth = net(z, t, h, Y, guidance=G, head="uv", tangents=(dz, 1.0, 1.0))
    assert both.shape == (3, 6, 8, 8) and dboth.shape == (3, 3, 8, 8)
    torch.testing.assert_close(both, torch.cat([u, v], dim=1), rtol=0, atol=0)
    torch.testing.assert_close(dboth, du, rtol=0, atol=0)
    part, dpart = net(z, t, h, Y, guidance=G, head="uv", tangents=(dz[:2], 1.0, 1.0))
    torch.testing.assert_close(part, both, rtol=0, atol=0)
    torch.testing.assert_close(dpart, du[:2], rtol=1e-12, atol=1e-12)
    assert not torch.equal(u, v)  # the heads have their own weights


def test_heads_share_the_first_blocks_only():
    net = perturb_(tiny().double(), std=0.1)
    z, t, h = _inputs()
    v0 = net(z, t, h, Y, head="v")
    with torch.no_grad():
        net.blocks[-1].mlp.w2.weight.add_(1.0)  # the u-head's own block
    torch.testing.assert_close(net(z, t, h, Y, head="v"), v0, rtol=0, atol=0)
    with torch.no_grad():
        net.blocks[0].mlp.w2.weight.add_(1.0)  # a shared block
    assert not torch.allclose(net(z, t, h, Y, head="v"), v0)


def test_conditioned_on_h_only_not_t():
    net = perturb_(tiny().double(), std=0.1)
    z, t, h = _inputs()
    _, d_t = net(z, t, h, Y, tangents=(torch.zeros_like(z), 1.0, 0.0))
    _, d_h = net(z, t, h, Y, tangents=(torch.zeros_like(z), 0.0, 1.0))
    assert torch.count_nonzero(d_t) == 0 and d_h.abs().max() > 1e-3
    torch.testing.assert_close(net(z, t, h, Y), net(z, t * 0.3, h, Y), rtol=0, atol=0)


# ------------------------------------------------------------------ each new block, float64


def test_bottleneck_patch_embedding_tangent():
    net = perturb_(tiny().double(), std=0.1)
    z, _, _ = _inputs()
    dz = torch.randn_like(z)
    x, dx = net.embed(z, dz)
    assert x.shape == (3, 16, 16)
    out, ref, fd = _jvp_and_fd(lambda a: net.embed(a, None)[0], z, dz)
    torch.testing.assert_close(x, out, rtol=0, atol=0)
    torch.testing.assert_close(dx, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, fd, rtol=1e-8, atol=1e-8)
    # Known answer: patch (row 1, col 2) is W2 (W1 . patch + b1) + b2.
    w1, b1, w2, b2 = net.x_embedder.weight, net.x_embedder.bias, net.x_proj.weight, net.x_proj.bias
    patch = z[:, :, 2:4, 4:6]
    mid = torch.einsum("ocij,bcij->bo", w1, patch) + b1
    torch.testing.assert_close(x[:, 1 * 4 + 2], mid @ w2[:, :, 0, 0].T + b2)


def test_token_conditioning_tangent():
    net = perturb_(tiny(guidance_cond=True).double(), std=0.1)
    z, t, h = _inputs()
    dt, dh = torch.randn(3, dtype=D64), torch.randn(3, dtype=D64)
    c, dc = net._condition_tokens(t, h, Y, dt, dh, G, 3, z)
    assert c.shape == (3, 8 + 4 + 2 + 2 + 4, 16)

    def f(tt, hh):
        return net._condition_tokens(tt, hh, Y, None, None, G, 3, z)[0]

    out, ref = torch.func.jvp(f, (t, h), (dt, dh))
    with torch.no_grad():
        fd = (f(t + 1e-6 * dt, h + 1e-6 * dh) - f(t - 1e-6 * dt, h - 1e-6 * dh)) / 2e-6
    torch.testing.assert_close(c, out, rtol=0, atol=0)
    torch.testing.assert_close(dc, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dc, fd, rtol=1e-7, atol=1e-8)
    assert torch.count_nonzero(dc[:, :16]) == 0 and dc[:, 16:].abs().max() > 1e-3  # only the h tokens move


def _official_rope(x, prefix, grid, theta=10000.0):
    """models/pmfDiT.py:386-406 transcribed: pairs as complex numbers times exp(i angle), angles
    ``row f_j`` then ``col f_j`` with ``f_j = theta^(-2j / (d/2))``; the prefix is not rotated."""
    d = x.shape[-1]
    half = d // 2
    f = 1.0 / theta ** (torch.arange(0, half, 2, dtype=D64) / half)
    pos = torch.arange(grid, dtype=D64)
    rows = (pos[:, None, None] * f).expand(grid, grid, -1)
    cols = (pos[None, :, None] * f).expand(grid, grid, -1)
    ang = torch.cat([rows, cols], dim=-1).reshape(grid * grid, half)
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], half, 2).contiguous())
    rot = torch.cat([xc[..., :prefix, :], xc[..., prefix:, :] * torch.polar(torch.ones_like(ang), ang)], -2)
    return torch.view_as_real(rot).reshape(x.shape)


def test_rope_2d_matches_the_official_layout():
    net = tiny()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, net.prefix + 16, 16, generator=g, dtype=D64)
    ang = rope_angles(16, net.prefix, 4, "2d")
    torch.testing.assert_close(rotate(x, ang.cos(), ang.sin()), _official_rope(x, net.prefix, 4))
    torch.testing.assert_close(net.rope_cos[: net.prefix], torch.ones(net.prefix, 4))


def test_rope_qk_norm_attention_tangent():
    torch.manual_seed(0)
    attn = perturb_(RoPEAttention(16, 2).double(), std=0.1)
    ang = rope_angles(8, 3, 2, "2d")
    cos, sin = ang.cos(), ang.sin()
    g = torch.Generator().manual_seed(4)
    x, dx = torch.randn(2, 3 + 4, 16, generator=g, dtype=D64), torch.randn(2, 7, 16, generator=g, dtype=D64)
    y, dy = attn(x, dx, cos, sin)
    out, ref, fd = _jvp_and_fd(lambda a: attn(a, None, cos, sin)[0], x, dx)
    torch.testing.assert_close(y, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dy, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dy, fd, rtol=1e-7, atol=1e-8)


def test_qk_rms_norm_and_swiglu_tangents():
    g = torch.Generator().manual_seed(5)
    x, dx = torch.randn(2, 2, 5, 8, generator=g, dtype=D64), torch.randn(2, 2, 5, 8, generator=g, dtype=D64)
    w = torch.randn(8, generator=g, dtype=D64)
    y, dy = rms_norm(x, dx, w)
    out, ref, fd = _jvp_and_fd(lambda a: rms_norm(a, None, w)[0], x, dx)
    torch.testing.assert_close(dy, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dy, fd, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(y.square().mean(-1), w.square().mul(x.square() / x.square().mean(-1, True)
                                                                   .add(1e-6)).mean(-1))
    mlp = perturb_(SwiGLU(8, 21).double(), std=0.1)
    y, dy = mlp(x, dx)
    out, ref, fd = _jvp_and_fd(lambda a: mlp(a)[0], x, dx)
    a, b = (x @ mlp.w13.weight.T).split(21, dim=-1)
    torch.testing.assert_close(y, (torch.nn.functional.silu(a) * b) @ mlp.w2.weight.T)
    torch.testing.assert_close(dy, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dy, fd, rtol=1e-7, atol=1e-8)


# ------------------------------------------------------------------ init, options, sizes


def test_zero_output_at_init_and_gradients_reach_every_parameter():
    net = tiny(guidance_cond=True)
    z, t, h = _inputs(dtype=torch.float32)
    out, dout = net(z, t, h, Y, guidance=G.float(), head="uv", tangents=(torch.randn_like(z), 1.0, 1.0))
    assert torch.count_nonzero(out) == 0 and torch.count_nonzero(dout) == 0
    net = perturb_(net, std=0.1)
    out, _ = net(z, t, h, Y, guidance=G.float(), head="uv", tangents=(torch.randn_like(z), 1.0, 1.0))
    out.square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_options_and_inputs_are_one_line_user_errors():
    for kw in (dict(patch_size=3), dict(num_heads=8), dict(aux_head_depth=4), dict(bottleneck=0),
               dict(guidance_cond="yes"), dict(class_tokens=0)):
        with pytest.raises(UserError) as err:
            tiny(**kw)
        assert "pmf-dit" in str(err.value) and "\n" not in str(err.value)
    net = tiny()
    z, t, h = _inputs(dtype=torch.float32)
    for call, match in ((lambda: net(z, t, h, Y, head="w"), "head must be"),
                        (lambda: net(z[:, :1], t, h, Y), "built for inputs"),
                        (lambda: net(z, t, h, Y, guidance=G.float()), "without guidance_cond"),
                        (lambda: tiny(guidance_cond=True)(z, t, h, Y), "needs the keyword input")):
        with pytest.raises(UserError, match=match):
            call()


def _official_count(depth, d, heads, p, k=1000, c=3, guidance=True, aux=8, freq=256):
    """Closed form of the official pmfDiT (models/pmfDiT.py, embedder.py), u path and v-head."""
    bn = 128 if d <= 1024 else 256
    hm, hd, n = int(d * 8 / 3), d // heads, (256 // p if p == 16 else 512 // p) ** 2
    block = 4 * d * d + 2 * hd + 2 * d + 3 * d * hm + 2 * d
    temb = freq * d + d + d * d + d
    tokens = 8 + 4 + (4 + 2 + 2 if guidance else 0)
    final = d + d * p * p * c + p * p * c
    return (p * p * c * bn + bn + bn * d + d + temb * (4 if guidance else 1) + (k + 1) * d + tokens * d
            + (n + tokens) * d + (depth + aux) * block + final * (2 if aux else 1))


SIZES = {"b": (16, 768, 12), "l": (32, 1024, 16), "h": (48, 1280, 16)}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("patch", [16, 32])
def test_registry_sizes_and_parameter_counts(size, patch):
    depth, d, heads = SIZES[size]
    for guidance, aux in ((True, 8), (False, 0)):
        with torch.device("meta"):
            net = build_network(f"pmf-dit-{size}/{patch}", guidance_cond=guidance, aux_head_depth=aux)
        assert (len(net.blocks), len(net.v_blocks), net.blocks[0].attn.num_heads) == (depth, aux, heads)
        assert net.input_size == 16 * patch and net.grid == 16
        assert net.x_embedder.out_channels == (256 if size == "h" else 128)
        n = sum(p.numel() for p in net.parameters())
        assert n == _official_count(depth, d, heads, patch, guidance=guidance, aux=aux)
    assert "guidance_cond" in inspect.signature(NETWORKS[f"pmf-dit-{size}/{patch}"]).parameters


def test_generic_name_takes_explicit_options():
    net = build_network("pmf-dit", input_size=8, in_channels=1, patch_size=2, hidden_size=16, depth=2,
                        num_heads=2, num_classes=0, bottleneck=4, aux_head_depth=1)
    z = torch.randn(2, 1, 8, 8)
    assert seeded(0, net, z, 0.5, 0.5).shape == z.shape
