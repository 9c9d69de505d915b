"""The improved-MeanFlow DiT: tangent mode, zero init, guidance inputs, sizes and parameter counts."""

from __future__ import annotations

import inspect

import pytest
import torch
from netcheck import check_tangent_mode, perturb_

from meanflow.errors import UserError
from meanflow.networks import NETWORKS, IMFDiT, build_network
from meanflow.networks.imf_dit import rope_angles
from meanflow.networks.imf_layers import rms_norm, rotate
from meanflow.training.build import build_net
from meanflow.training.presets import resolve_config


def tiny(**kw):
    cfg = dict(input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=2, num_heads=2,
               num_classes=10)
    cfg.update(kw)
    return IMFDiT(**cfg)


def _inputs(b=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(b, 4, 8, 8, generator=g, dtype=dtype)
    t = torch.rand(b, generator=g, dtype=dtype)
    return z, t, t * torch.rand(b, generator=g, dtype=dtype)


Y = torch.tensor([0, 10, 7])  # 10 = the null class
G = torch.tensor([[1.0, 0.0, 1.0], [3.5, 0.2, 0.7], [8.0, 0.4, 0.65]], dtype=torch.float64)


@pytest.mark.parametrize("guidance_cond,rope,t_tokens,train", [
    (False, "1d", 0, True), (True, "1d", 0, False), (True, "2d", 2, True), (False, "2d", 1, False),
])
def test_tangent_mode_matches_jvp_and_finite_differences(guidance_cond, rope, t_tokens, train):
    net = perturb_(tiny(guidance_cond=guidance_cond, rope=rope, t_tokens=t_tokens).double(), std=0.1)
    net.train(train)
    kw = dict(guidance=G) if guidance_cond else {}
    check_tangent_mode(net, *_inputs(), Y, **kw)


def test_unconditional_tangent_mode():
    net = perturb_(tiny(num_classes=0).double(), std=0.1)
    check_tangent_mode(net, *_inputs(), None)


@pytest.mark.parametrize("t_tokens", [0, 2])
def test_time_tangents_enter_through_the_time_tokens(t_tokens):
    # Official network: conditioned on h only, so a tangent along t alone is exactly zero.
    net = perturb_(tiny(t_tokens=t_tokens).double(), std=0.1)
    z, t, h = _inputs()
    _, d_t = net(z, t, h, Y, tangents=(torch.zeros_like(z), 1.0, 0.0))
    _, d_h = net(z, t, h, Y, tangents=(torch.zeros_like(z), 0.0, 1.0))
    assert d_h.abs().max() > 1e-3
    assert (d_t.abs().max() > 1e-3) if t_tokens else torch.count_nonzero(d_t) == 0


def test_layer_tangents_against_jvp():
    g = torch.Generator().manual_seed(1)
    x, dx = torch.randn(2, 5, 8, generator=g, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    w = torch.randn(8, generator=g, dtype=torch.float64)
    y, dy = rms_norm(x, dx, w)
    ref = torch.func.jvp(lambda a: rms_norm(a, None, w)[0], (x,), (dx,))
    torch.testing.assert_close((y, dy), ref, rtol=1e-12, atol=1e-12)
    ang = torch.rand(5, 4, generator=g, dtype=torch.float64) * 10
    r = rotate(x[:, None], ang.cos(), ang.sin())
    torch.testing.assert_close(r.norm(dim=-1), x[:, None].norm(dim=-1))  # a rotation keeps norms


def test_output_shape_and_exactly_zero_at_init():
    net = tiny(guidance_cond=True)
    z, t, h = _inputs(dtype=torch.float32)
    out, dout = net(z, t, h, Y, tangents=(torch.randn_like(z), 1.0, 1.0), guidance=G.float())
    assert out.shape == z.shape == dout.shape
    assert torch.count_nonzero(out) == 0 and torch.count_nonzero(dout) == 0


def test_gradients_reach_every_parameter():
    net = perturb_(tiny(guidance_cond=True, t_tokens=1), std=0.1)
    z, t, h = _inputs(dtype=torch.float32)
    out, _ = net(z, t, h, Y, tangents=(torch.randn_like(z), 1.0, 1.0), guidance=G.float())
    out.square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_guidance_inputs_change_the_output_and_are_checked():
    net = perturb_(tiny(guidance_cond=True).double(), std=0.1)
    z, t, h = _inputs()
    base = net(z, t, h, Y, guidance=G)
    for col in range(3):
        g2 = G.clone()
        g2[:, col] += 0.1
        assert (net(z, t, h, Y, guidance=g2) - base).abs().amax(dim=(1, 2, 3)).min() > 1e-6
    with pytest.raises(UserError, match="needs the keyword input guidance"):
        net(z, t, h, Y)
    with pytest.raises(UserError, match="shape"):
        net(z, t, h, Y, guidance=G[:, :2])
    with pytest.raises(UserError, match="without guidance_cond"):
        tiny().double()(z, t, h, Y, guidance=G)


def test_bad_options_raise_user_error():
    for kw in (dict(patch_size=3), dict(num_heads=3), dict(rope="3d"), dict(guidance_cond="yes"),
               dict(hidden_size=24, num_heads=4, rope="2d"), dict(class_tokens=0)):
        with pytest.raises(UserError):
            tiny(**kw)
    with pytest.raises(UserError, match="built for inputs"):
        tiny()(torch.zeros(1, 4, 6, 6), 0.5, 0.1)


def _official_count(depth, d, heads, guidance, k=1000, c=4, p=2, freq=256):
    """Closed form of the official imfDiT's u path (models/imfDiT.py), counted by hand."""
    hm, hd = int(d * 8 / 3), d // heads
    block = 4 * d * d + 2 * hd + 2 * d + 3 * d * hm + 2 * d
    temb = freq * d + d + d * d + d
    tokens = 8 + 4 + (4 + 2 + 2 if guidance else 0)
    return (c * p * p * d + d + depth * block + temb * (4 if guidance else 1) + (k + 1) * d + tokens * d
            + d + d * p * p * c + p * p * c)


# Counted here for 32x32x4 latents and 1000 classes (u path only: no auxiliary v-head).
COUNTS = {  # size: (guidance_cond=False, guidance_cond=True)
    "b": (86_565_136, 88_935_184),
    "m": (171_538_192, 173_908_240),
    "l": (405_107_728, 409_054_224),
    "xl": (606_469_136, 610_415_632),
}
SIZES = {"b": (12, 768, 12), "m": (24, 768, 12), "l": (32, 1024, 16), "xl": (48, 1024, 16)}


@pytest.mark.parametrize("size", list(COUNTS))
def test_registry_sizes_and_parameter_counts(size):
    for guidance, expected in zip((False, True), COUNTS[size]):
        with torch.device("meta"):
            net = build_network(f"imf-dit-{size}/2", guidance_cond=guidance)
        depth, d, heads = SIZES[size]
        shape = (len(net.blocks), net.blocks[0].attn.num_heads, net.final_norm.weight.numel())
        assert shape == (depth, heads, d)
        n = sum(p.numel() for p in net.parameters())
        assert n == expected == _official_count(depth, d, heads, guidance)
    if size == "b":  # iMF-B/2: 89M parameters in the paper's configuration table (quoted by a secondary
        # source, reportify.ai on 36Kr, 2025-12-04; the paper's full text was not retrievable here)
        assert abs(COUNTS["b"][1] / 89e6 - 1) < 0.01


def test_factories_take_the_guidance_option():
    for name in ["imf-dit"] + [f"imf-dit-{s}/2" for s in COUNTS]:
        assert "guidance_cond" in inspect.signature(NETWORKS[name]).parameters


def test_imf_method_turns_on_guidance_cond_through_the_builder():
    net_cfg = "network={name: imf-dit, kwargs: {patch_size: 2, hidden_size: 16, depth: 1, num_heads: 2}}"
    cfg = resolve_config("digits", overrides=[net_cfg, "method.name=imf", "data.use_labels=true"])
    net = build_net(cfg, (1, 8, 8), 10)
    assert isinstance(net, IMFDiT) and net.guidance_cond is True and net.num_classes == 10
    uncond = ["data.use_labels=false", "method.kwargs.omega=1.0", "method.kwargs.class_dropout=0.0"]
    cfg = resolve_config("digits", overrides=[net_cfg, *uncond])
    assert build_net(cfg, (1, 8, 8), 0).guidance_cond is False


def test_rope_angles_and_relative_positions():
    one = rope_angles(8, 3, 2, "1d")
    assert one.shape == (7, 4)
    torch.testing.assert_close(one[5], 5 * 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    two = rope_angles(8, 3, 2, "2d")
    assert torch.count_nonzero(two[:3]) == 0  # conditioning tokens are not rotated
    f = 10000.0 ** (-torch.arange(0, 4, 2, dtype=torch.float64) / 4)
    torch.testing.assert_close(two[3 + 3], torch.cat([1 * f, 1 * f]))  # patch (row 1, col 1)
    torch.testing.assert_close(two[3 + 2], torch.cat([1 * f, 0 * f]))  # patch (row 1, col 0)
    # <R_m q, R_n k> depends on n - m only.
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 8, generator=g, dtype=torch.float64)
    freqs = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)

    def rot(x, pos):
        a = pos * freqs
        return rotate(x[None, None, None], a.cos()[None], a.sin()[None]).flatten()

    torch.testing.assert_close(rot(q, 3) @ rot(k, 7), rot(q, 0) @ rot(k, 4))
