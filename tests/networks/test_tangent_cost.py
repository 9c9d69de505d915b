"""Tangent mode must be cheap: no extra saved activations, about one extra forward of FLOPs.

Counted (saved-tensor bytes, FLOPs), never timed, so the checks are deterministic.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from meanflow.networks import build_network

NETS = {
    "dit": ("dit", dict(input_size=8, in_channels=2, patch_size=2, hidden_size=32, depth=2,
                        num_heads=2), (2, 2, 8, 8)),
    "unet": ("unet", dict(img_resolution=8, in_channels=2, model_channels=16, channel_mult=(1, 2),
                          num_blocks=1, attn_resolutions=(4,), dropout=0.1), (2, 2, 8, 8)),
    "mlp": ("mlp", dict(dim=2, hidden=32, depth=2), (4, 2)),
}


def _saved_bytes(fn) -> int:
    total = 0

    def pack(x):
        nonlocal total
        total += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return total


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("key", list(NETS))
def test_tangent_mode_saves_no_extra_activations_and_costs_one_forward(key):
    name, kw, shape = NETS[key]
    net = build_network(name, **kw).train()
    z = torch.randn(shape)
    t = torch.rand(shape[0])
    tangents = (torch.randn(shape), torch.ones(shape[0]), torch.ones(shape[0]))

    def plain():
        return net(z, t, 0.5 * t)

    def tangent():
        return net(z, t, 0.5 * t, tangents=tangents)

    def func_jvp():
        return torch.func.jvp(lambda a: net(a, t, 0.5 * t), (z,), (tangents[0],))

    assert _saved_bytes(tangent) == _saved_bytes(plain)
    assert _saved_bytes(func_jvp) > 1.5 * _saved_bytes(plain)  # what tangent mode avoids
    ratio = _flops(tangent) / _flops(plain)
    assert 1.9 < ratio < 2.25, ratio
