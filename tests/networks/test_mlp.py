"""The MLP backbone."""

from __future__ import annotations

import pytest
import torch
from netcheck import check_tangent_mode, perturb_

from meanflow.errors import UserError
from meanflow.networks import MLP


@pytest.mark.parametrize("num_classes", [0, 3])
def test_tangent_mode(num_classes):
    net = perturb_(MLP(dim=2, hidden=16, depth=2, num_classes=num_classes).double())
    z = torch.randn(5, 2, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 3]) if num_classes else None
    check_tangent_mode(net, z, t, 0.5 * t, y)


def test_any_shape_and_scalar_times():
    net = MLP(dim=12, hidden=8, depth=1)
    z = torch.randn(3, 3, 4)
    out = net(z, 0.5, 0.0)
    assert out.shape == z.shape
    out2, dout = net(z, torch.full((3,), 0.5), torch.zeros(3), tangents=(z, 1.0, 1.0))
    torch.testing.assert_close(out, out2)
    assert dout.shape == z.shape


def test_bad_inputs():
    with pytest.raises(UserError):
        MLP(dim=0)
    net = MLP(dim=2, hidden=8, depth=1)
    with pytest.raises(UserError):
        net(torch.randn(3, 5), torch.rand(3), torch.rand(3))
    with pytest.raises(UserError):
        net(torch.randn(3, 2), torch.rand(3), torch.rand(3), tangents=(torch.randn(3, 2),))
