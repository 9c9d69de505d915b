"""MeanFlow on the project's backbones: tangent mode and torch.func.jvp give the same loss and grads."""

import pytest
import torch
from torch import nn

from meanflow.methods import MeanFlow
from meanflow.networks import build_network

NETS = {
    "mlp": (dict(dim=6, hidden=32, depth=2, num_classes=3), (2, 3)),
    "dit": (dict(input_size=8, in_channels=2, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                 num_classes=3), (2, 8, 8)),
    "unet": (dict(img_resolution=8, in_channels=2, model_channels=8, channel_mult=(1, 2), num_blocks=1,
                  attn_resolutions=(4,), dropout=0.0, num_classes=3), (2, 8, 8)),
}


class HideTangents(nn.Module):
    """Forwards to a network but hides its tangent mode (stored under a name other than .module)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, z, t, h, y=None):
        return self.inner(z, t, h, y)


@pytest.mark.parametrize("name", list(NETS))
def test_tangent_mode_and_func_jvp_agree_on_loss_and_grads(name):
    kwargs, shape = NETS[name]
    torch.manual_seed(0)
    net = build_network(name, **kwargs).double()
    with torch.no_grad():  # leave the zero-init (adaLN, output) so every path is exercised
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert net.supports_tangents
    b = 4
    x, noise = torch.randn(b, *shape, dtype=torch.float64), torch.randn(b, *shape, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.7, 0.3], dtype=torch.float64)
    r = torch.tensor([0.2, 0.5, 0.0, 0.1], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    method = MeanFlow(omega=1.5, kappa=0.2, num_classes=3)
    results = []
    for wrapped in (net, HideTangents(net)):
        net.zero_grad()
        out = method.loss(wrapped, x, y, noise=noise, t=t, r=r)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in net.parameters()]))
    (la, ga), (lb, gb) = results
    torch.testing.assert_close(la, lb, rtol=1e-9, atol=1e-12)
    for a, g in zip(ga, gb):
        torch.testing.assert_close(a, g, rtol=1e-7, atol=1e-10)
