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
