"""The DiT backbone: tangent mode, zero init, gradients, sizes and parameter counts."""

from __future__ import annotations

import pytest
import torch
from netcheck import check_tangent_mode, perturb_

from meanflow.errors import UserError
from meanflow.networks import DiT, build_network


def tiny(**kw):
    cfg = dict(input_size=8, in_channels=2, patch_size=2, hidden_size=16, depth=2, num_heads=2)
    cfg.update(kw)
    return DiT(**cfg)


def _inputs(b=3, c=2, s=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(b, c, s, s, generator=g, dtype=dtype)
    t = torch.rand(b, generator=g, dtype=dtype)
    return z, t, t * torch.rand(b, generator=g, dtype=dtype)


@pytest.mark.parametrize("num_classes", [0, 4])
def test_tangent_mode_with_attention(num_classes):
    net = perturb_(tiny(num_classes=num_classes).double())
    y = torch.tensor([0, 4, 2]) if num_classes else None
    check_tangent_mode(net, *_inputs(), y)


def test_output_exactly_zero_at_init():
    net = tiny(num_classes=4)
    z, t, h = _inputs(dtype=torch.float32)
    assert torch.count_nonzero(net(z, t, h, torch.tensor([0, 1, 4]))) == 0
    out, dout = net(z, t, h, tangents=(torch.randn_like(z), 1.0, 1.0))
    assert torch.count_nonzero(out) == 0 and torch.count_nonzero(dout) == 0


def test_gradients_reach_every_parameter():
    # At init the zero-initialised adaLN and output layers block the gradient of everything
    # before them (by design: each block starts as the identity). Perturbing all parameters
    # makes every path live, so a parameter with no gradient would reveal a disconnected layer.
    net = perturb_(tiny(num_classes=4), std=0.1)
    z, t, h = _inputs(dtype=torch.float32)
    out, _ = net(z, t, h, torch.tensor([0, 1, 4]), tangents=(torch.randn_like(z), 1.0, 1.0))
    out.square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_zero_init_layers_get_gradient_at_init():
    net = tiny()
    z, t, h = _inputs(dtype=torch.float32)
    net(z, t, h).sum().backward()
    assert net.final_layer.linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("patch", [2, 4, 8])
def test_shapes_for_each_patch_size(patch):
    net = tiny(input_size=16, patch_size=patch, in_channels=3)
    z = torch.randn(2, 3, 16, 16)
    assert net(z, torch.rand(2), torch.zeros(2)).shape == z.shape
    assert net.pos_embed.shape == (1, (16 // patch) ** 2, 16)


def test_class_conditioning_with_null_class():
    net = perturb_(tiny(num_classes=4))
    z, t, h = _inputs(dtype=torch.float32)
    null = net(z, t, h, torch.full((3,), 4))
    torch.testing.assert_close(net(z, t, h, None), null)
    assert not torch.allclose(net(z, t, h, torch.zeros(3, dtype=torch.long)), null)


@pytest.mark.parametrize(
    "kw", [dict(input_size=10, patch_size=4), dict(hidden_size=18, num_heads=4), dict(depth=0)]
)
def test_bad_configs_raise_user_error(kw):
    with pytest.raises(UserError):
        tiny(**kw)


def test_wrong_input_shape_raises():
    with pytest.raises(UserError):
        tiny()(torch.randn(2, 2, 16, 16), torch.rand(2), torch.rand(2))


# Published sizes (MeanFlow Table 2 / DiT): params on 32x32x4 latents with 1000 classes.
@pytest.mark.parametrize(
    "name,published", [("dit-b/2", 131e6), ("dit-m/2", 308e6), ("dit-l/2", 459e6), ("dit-xl/2", 676e6)]
)
def test_parameter_counts(name, published):
    # Measured: B/2 131,091,472; M/2 308,019,216; L/2 459,137,040; XL/2 676,440,592.
    with torch.device("meta"):
        net = build_network(name)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - published) / published < 0.02, n
