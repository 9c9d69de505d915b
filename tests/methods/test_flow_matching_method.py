"""FlowMatching: the loss value, h = 0, Euler and Heun on a linear ODE, validation."""

import pytest
import torch
from method_testnets import SpyNet, TinyNet

from meanflow.errors import UserError
from meanflow.methods import FlowMatching


def test_loss_value_and_h_zero():
    net = SpyNet(scale=0.3)
    x, noise, t = torch.randn(5, 2, 2), torch.randn(5, 2, 2), torch.rand(5)
    out = FlowMatching().loss(net, x, noise=noise, t=t)
    z = (1 - t[:, None, None]) * x + t[:, None, None] * noise
    expected = ((0.3 * z - (noise - x)) ** 2).sum((1, 2)).mean()
    torch.testing.assert_close(out.loss, expected)
    (t_seen, h_seen, _), = net.calls
    assert torch.equal(t_seen, t) and torch.all(h_seen == 0)


def test_gradients_reach_every_parameter():
    net = TinyNet(shape=(3,), hidden=16, depth=3, num_classes=2)
    FlowMatching(time_dist="uniform").loss(net, torch.randn(8, 3), torch.randint(0, 3, (8,))).loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("steps", [1, 3])
def test_euler_and_heun_on_linear_field(steps):
    """v(z) = a z: Euler multiplies by (1 - dt a) per step, Heun by (1 - dt a + (dt a)^2 / 2)."""
    a = 0.8
    e = torch.randn(6, 4)
    dt = 1.0 / steps
    net = SpyNet(scale=a)
    x = FlowMatching(solver="euler").sample(net, e, steps=steps)
    torch.testing.assert_close(x, e * (1 - dt * a) ** steps)
    assert len(net.calls) == steps
    net = SpyNet(scale=a)
    x = FlowMatching(solver="heun").sample(net, e, steps=steps)
    torch.testing.assert_close(x, e * (1 - dt * a + (dt * a) ** 2 / 2) ** steps)
    assert len(net.calls) == 2 * steps
    assert [float(c[0][0]) for c in net.calls[:2]] == pytest.approx([1.0, 1.0 - dt])
    assert all(torch.all(c[1] == 0) for c in net.calls)


def test_sample_shape_and_custom_schedule():
    net = SpyNet(scale=0.0)
    e = torch.randn(3, 2, 4, 4)
    x = FlowMatching().sample(net, e, torch.tensor([0, 1, 2]), schedule=torch.tensor([1.0, 0.4, 0.0]))
    assert x.shape == e.shape and not x.requires_grad
    assert [float(c[0][0]) for c in net.calls] == pytest.approx([1.0, 0.4])


@pytest.mark.parametrize("kwargs", [dict(solver="rk4"), dict(time_dist="gamma"), dict(t_std=-1.0)])
def test_invalid_hyper_parameters_raise(kwargs):
    with pytest.raises(UserError):
        FlowMatching(**kwargs)
