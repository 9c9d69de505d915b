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


def _guidance(b, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = 1 + 7 * torch.rand(b, generator=g, dtype=dtype)
    return torch.stack([w, 0.5 * torch.rand(b, generator=g, dtype=dtype),
                        0.5 + 0.5 * torch.rand(b, generator=g, dtype=dtype)], dim=1)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_tangent_mode_with_guidance_inputs(num_classes):
    """Guidance inputs (no tangent) leave the exact tangent equal to torch.func.jvp in float64."""
    net = perturb_(MLP(dim=2, hidden=16, depth=2, num_classes=num_classes, guidance_cond=True).double())
    z = torch.randn(5, 2, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 3]) if num_classes else None
    g = _guidance(5)
    check_tangent_mode(net, z, t, 0.5 * t, y, guidance=g)
    # the guidance inputs do change the output
    other = g.clone()
    other[:, 0] = 1.0
    assert (net(z, t, 0.5 * t, y, guidance=g) - net(z, t, 0.5 * t, y, guidance=other)).abs().max() > 1e-4


def test_guidance_inputs_are_checked():
    plain = MLP(dim=2, hidden=8, depth=1)
    guided = MLP(dim=2, hidden=8, depth=1, guidance_cond=True)
    z, t = torch.randn(3, 2), torch.rand(3)
    g = _guidance(3, torch.float32)
    for call in (lambda: plain(z, t, t, guidance=g), lambda: guided(z, t, t),
                 lambda: guided(z, t, t, guidance=g[:, :2]), lambda: guided(z, t, t, guidance=g[:2])):
        with pytest.raises(UserError) as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(UserError):
        MLP(dim=2, guidance_cond="yes")
    # no guidance_cond: exactly the parameters (and initial values) of before
    torch.manual_seed(0)
    a = MLP(dim=2, hidden=8, depth=1)
    torch.manual_seed(0)
    b = MLP(dim=2, hidden=8, depth=1, guidance_cond=False)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
