"""The network registry."""

from __future__ import annotations

import pytest
import torch

from meanflow.errors import UserError
from meanflow.networks import NETWORKS, build_network


def test_names_from_the_design():
    expected = {"dit", "unet", "unet-ddpmpp", "unet-meanflow", "mlp"}
    expected |= {f"dit-{s}/{p}" for s in ("s", "b", "m", "l", "xl") for p in (2, 4, 8)}
    expected |= {"imf-dit"} | {f"imf-dit-{s}/2" for s in ("b", "m", "l", "xl")}
    expected |= {"pmf-dit"} | {f"pmf-dit-{s}/{p}" for s in ("b", "l", "h") for p in (16, 32)}
    assert set(NETWORKS) == expected


def test_unknown_name_lists_choices():
    with pytest.raises(UserError, match="dit-b/2"):
        build_network("resnet")


def test_bad_kwargs_raise_user_error():
    with pytest.raises(UserError):
        build_network("mlp", dim=2, widht=3)
    with pytest.raises(UserError):
        build_network("dit-s/8", hidden_size=3)


@pytest.mark.parametrize(
    "name,kw,shape",
    [
        ("mlp", dict(dim=2, hidden=8, depth=1), (2, 2)),
        ("dit", dict(input_size=8, in_channels=1, patch_size=4, hidden_size=8, depth=1,
                     num_heads=2), (2, 1, 8, 8)),
        ("unet", dict(img_resolution=8, in_channels=1, model_channels=8, channel_mult=[1],
                      num_blocks=1, attn_resolutions=[], dropout=0.0), (2, 1, 8, 8)),
    ],
)
def test_build_and_call(name, kw, shape):
    net = build_network(name.upper(), **kw)
    assert net.supports_tangents
    z = torch.randn(shape)
    assert net(z, torch.rand(2), torch.zeros(2)).shape == shape


def test_size_factories_use_the_published_shapes():
    with torch.device("meta"):
        net = build_network("dit-xl/4")
    assert len(net.blocks) == 28 and net.pos_embed.shape == (1, 64, 1152)
    assert net.patch_size == 4 and net.num_classes == 1000 and net.in_channels == 4
