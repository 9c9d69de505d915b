"""The DDPM++ U-Net: tangent mode (with dropout), shapes, conditioning, parameter count."""

from __future__ import annotations

import pytest
import torch
from netcheck import check_tangent_mode, perturb_, seeded

from meanflow.errors import UserError
from meanflow.networks import SongUNet, build_network


def tiny(**kw):
    cfg = dict(img_resolution=8, in_channels=2, model_channels=8, channel_mult=(1, 2),
               num_blocks=1, attn_resolutions=(4,), dropout=0.3)
    cfg.update(kw)
    return build_network("unet", **cfg)


def _inputs(b=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(b, 2, 8, 8, generator=g, dtype=dtype)
    t = torch.rand(b, generator=g, dtype=dtype)
    return z, t, t * torch.rand(b, generator=g, dtype=dtype)


def test_tangent_mode_train_mode_dropout():
    net = perturb_(tiny().double()).train()
    z, t, h = _inputs()
    check_tangent_mode(net, z, t, h)
    # the mask is real: different seeds give different outputs
    assert not torch.allclose(seeded(0, net, z, t, h), seeded(1, net, z, t, h))


def test_tangent_mode_adaptive_scale_classes_augment_attention_everywhere():
    net = tiny(adaptive_scale=True, num_classes=3, augment_dim=9, attn_resolutions=(8, 4))
    net = perturb_(net.double()).train()
    z, t, h = _inputs()
    aug = torch.randn(2, 9, dtype=torch.float64)
    check_tangent_mode(net, z, t, h, torch.tensor([1, 3]), augment_labels=aug)


def test_eval_mode_is_deterministic():
    net = tiny().eval()
    z, t, h = _inputs(dtype=torch.float32)
    torch.testing.assert_close(seeded(0, net, z, t, h), seeded(1, net, z, t, h))


def test_shapes_and_conditioning():
    net = perturb_(tiny(num_classes=3, augment_dim=2, dropout=0.0))
    z, t, h = _inputs(b=3, dtype=torch.float32)
    null = net(z, t, h, None)
    assert null.shape == z.shape
    torch.testing.assert_close(net(z, t, h, torch.full((3,), 3)), null)
    assert not torch.allclose(net(z, t, h, torch.zeros(3, dtype=torch.long)), null)
    aug = torch.randn(3, 2)
    assert not torch.allclose(net(z, t, h, None, augment_labels=aug), null)
    # zero augmentation labels are the same as none (the map has no bias)
    torch.testing.assert_close(net(z, t, h, None, augment_labels=torch.zeros(3, 2)), null)
    with pytest.raises(UserError):
        net(z, t, h, None, augment_labels=torch.zeros(3, 5))


def test_gradients_reach_every_parameter():
    net = perturb_(tiny(num_classes=3, augment_dim=2), std=0.1)
    z, t, h = _inputs(dtype=torch.float32)
    out, _ = net(z, t, h, torch.tensor([0, 3]), tangents=(z, 1.0, 1.0), augment_labels=torch.randn(2, 2))
    out.square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kw", [dict(img_resolution=6, channel_mult=(1, 2, 2)), dict(dropout=1.0), dict(num_blocks=0)]
)
def test_bad_configs_raise_user_error(kw):
    with pytest.raises(UserError):
        tiny(**kw)


def test_ddpmpp_parameter_count():
    # EDM's DDPM++ CIFAR-10 net is 55.7M; ours measures 55,798,275 (t and h features are
    # concatenated, so the first embedding layer takes 256 instead of 128 inputs).
    with torch.device("meta"):
        net = build_network("unet-ddpmpp")
    assert isinstance(net, SongUNet)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 55.7e6) / 55.7e6 < 0.02, n
    assert n == 55_798_275
    assert net.enc["32x32_block0"].dropout == 0.2
    assert [k for k, m in net.enc.items() if getattr(m, "attention", False)] == [
        f"16x16_block{i}" for i in range(4)
    ]


def _guidance(b, dtype=torch.float64, seed=0):
    """``[b, 3]`` rows ``(w, t_min, t_max)`` with ``w`` in [1, 8], ``t_min <= 0.5 <= t_max``."""
    g = torch.Generator().manual_seed(seed)
    w = 1 + 7 * torch.rand(b, generator=g, dtype=dtype)
    return torch.stack([w, 0.5 * torch.rand(b, generator=g, dtype=dtype),
                        0.5 + 0.5 * torch.rand(b, generator=g, dtype=dtype)], dim=1)


def test_tangent_mode_with_guidance_inputs():
    """Guidance inputs (no tangent) leave the exact tangent equal to torch.func.jvp (and a central
    difference) in float64, with classes and train-mode dropout."""
    net = perturb_(tiny(num_classes=3, guidance_cond=True).double()).train()
    z, t, h = _inputs()
    y = torch.tensor([1, 3])
    g = _guidance(2)
    check_tangent_mode(net, z, t, h, y, guidance=g)
    # each guidance input changes the output
    net.eval()
    base = net(z, t, h, y, guidance=g)
    for col, value in ((0, 1.0), (1, 0.0), (2, 1.0)):
        other = g.clone()
        other[:, col] = value
        assert (net(z, t, h, y, guidance=other) - base).abs().max() > 1e-6, col


def test_guidance_cond_false_is_the_network_of_before():
    """Default (False): same parameters, order, shapes and initial values, identical outputs."""
    torch.manual_seed(0)
    a = tiny(num_classes=3, augment_dim=2)
    torch.manual_seed(0)
    b = tiny(num_classes=3, augment_dim=2, guidance_cond=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any("guidance" in k for k in sa)
    perturb_(a), perturb_(b)
    a.eval(), b.eval()
    z, t, h = _inputs(b=3, dtype=torch.float32)
    y = torch.tensor([0, 2, 3])
    assert torch.equal(a(z, t, h, y), b(z, t, h, y))
    # the guided network only adds the guidance embedders
    torch.manual_seed(0)
    c = tiny(num_classes=3, augment_dim=2, guidance_cond=True)
    extra = set(c.state_dict()) - set(sa)
    assert set(sa) <= set(c.state_dict()) and extra and all(k.startswith("map_guidance.") for k in extra)


def test_guidance_inputs_are_checked():
    plain, guided = tiny(), tiny(guidance_cond=True)
    z, t, h = _inputs(dtype=torch.float32)
    g = _guidance(2, torch.float32)
    for call in (lambda: plain(z, t, h, guidance=g), lambda: guided(z, t, h),
                 lambda: guided(z, t, h, guidance=g[:, :2]), lambda: guided(z, t, h, guidance=g[:1])):
        with pytest.raises(UserError) as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(UserError):
        tiny(guidance_cond="yes")
    with torch.device("meta"):
        assert build_network("unet-ddpmpp", guidance_cond=True).guidance_cond


# ---- the options of the official MeanFlow U-Net (Gsunshine/py-meanflow) -------------------------------

OFFICIAL = dict(channel_mult_noise=2, embedding_order="sin-cos", resample_filter=(1, 3, 3, 1))


def test_tangent_mode_official_options():
    """Wider sin/cos time features and the [1, 3, 3, 1] resampling keep the tangent exact (float64)."""
    net = perturb_(tiny(augment_dim=6, **OFFICIAL).double()).train()
    z, t, h = _inputs()
    check_tangent_mode(net, z, t, h, augment_labels=torch.randn(2, 6, dtype=torch.float64))


def test_official_options_change_the_network_and_only_where_said():
    base, wide = tiny(), tiny(channel_mult_noise=2)
    assert wide.map_layer0.weight.shape == (32, 32) and base.map_layer0.weight.shape == (32, 16)
    # sin-cos is cos-sin with the halves of each time's features swapped
    a, b = perturb_(tiny(dropout=0.0)).eval(), tiny(dropout=0.0, embedding_order="sin-cos").eval()
    b.load_state_dict(a.state_dict())
    z, t, h = _inputs(dtype=torch.float32)
    assert not torch.allclose(a(z, t, h), b(z, t, h))
    w = b.map_layer0.weight.data
    n = a.noise_channels
    perm = torch.cat([torch.arange(n // 2, n), torch.arange(n // 2), n + torch.arange(n // 2, n),
                      n + torch.arange(n // 2)])
    b.map_layer0.weight.data = w[:, perm]
    torch.testing.assert_close(a(z, t, h), b(z, t, h))


def test_resample_filter_matches_edm_definition():
    """Down: depthwise conv with f f^T / (sum f)^2, stride 2, pad 1; up: its transpose times 4."""
    from meanflow.networks import layers as L

    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    f = torch.tensor([1.0, 3, 3, 1], dtype=torch.float64)
    k = (torch.outer(f, f) / f.sum() ** 2).expand(3, 1, 4, 4)
    torch.testing.assert_close(L.downsample(x, None, (1, 3, 3, 1))[0],
                               torch.nn.functional.conv2d(x, k, stride=2, padding=1, groups=3))
    torch.testing.assert_close(L.upsample(x, None, (1, 3, 3, 1))[0],
                               torch.nn.functional.conv_transpose2d(x, 4 * k, stride=2, padding=1, groups=3))
    # [1, 1] is the 2x2 box / nearest neighbour of before
    torch.testing.assert_close(L.downsample(x, None, (1, 1))[0], torch.nn.functional.avg_pool2d(x, 2))


def test_meanflow_parameter_count():
    # The official network's count (measured with its code: 55,932,419 with 6 augmentation labels).
    with torch.device("meta"):
        net = build_network("unet-meanflow", augment_dim=6)
    assert sum(p.numel() for p in net.parameters()) == 55_932_419
    assert net.resample_filter == (1, 3, 3, 1) and net.embedding_order == "sin-cos"


@pytest.mark.parametrize("kw", [dict(channel_mult_noise=0), dict(embedding_order="sin"),
                                dict(resample_filter=(1, 3, 3)), dict(resample_filter=(0, 0))])
def test_bad_official_options_raise_user_error(kw):
    with pytest.raises(UserError):
        tiny(**kw)
