"""Reflow and Distill: loss values on given pairs, the k-step time grid, samplers, validation."""

import math

import pytest
import torch
from method_testnets import SpyNet, TinyNet
from torch import nn

from meanflow.errors import UserError
from meanflow.methods import METHODS, Distill, FlowMatching, MeanFlow, Reflow, build_method
from meanflow.methods.rectified_flow import solve_to_data, velocity_field


class ConstNet(nn.Module):
    """Velocity ``c + a z`` (a scalar, c a vector) that records the inputs of every call."""

    def __init__(self, c, a=0.0):
        super().__init__()
        self.c, self.a, self.calls = torch.as_tensor(c, dtype=torch.float32), a, []

    def forward(self, z, t, h, y=None):
        self.calls.append((z.clone(), t.clone(), h.clone()))
        return self.c.expand_as(z) + self.a * z


def test_registered_and_flagged():
    assert METHODS["reflow"] is Reflow and METHODS["distill"] is Distill
    assert Reflow.needs_pairs and Distill.needs_pairs
    assert not FlowMatching.needs_pairs and not MeanFlow.needs_pairs
    assert build_method("reflow").time_dist == "uniform"
    d = build_method("distill", k=4)
    assert d.default_steps == 4 and Distill.default_steps == 1 and Distill().default_steps == 1


def test_reflow_is_flow_matching_on_the_given_noise():
    net = SpyNet(scale=0.3)
    x, noise, t = torch.randn(5, 3), torch.randn(5, 3), torch.rand(5)
    out = Reflow().loss(net, x, noise=noise, t=t)
    z = (1 - t[:, None]) * x + t[:, None] * noise
    torch.testing.assert_close(out.loss, ((0.3 * z - (noise - x)) ** 2).sum(1).mean())
    net = SpyNet()
    Reflow().loss(net, torch.zeros(4096, 1), noise=torch.zeros(4096, 1))
    (t_seen, h_seen, _), = net.calls
    assert torch.all(h_seen == 0) and abs(float(t_seen.mean()) - 0.5) < 0.02  # uniform t (the reference)
    assert abs(float((t_seen < 0.1).float().mean()) - 0.1) < 0.02


@pytest.mark.parametrize("solver", ["euler", "heun", "rk45"])
def test_reflow_samplers_are_exact_on_a_straight_field(solver):
    e, c = torch.randn(6, 2), torch.tensor([1.5, -2.0])
    x = Reflow(solver=solver).sample(ConstNet(c), e, steps=3)
    torch.testing.assert_close(x, e - c)


def test_distill_k1_regresses_the_displacement_at_t1():
    net = ConstNet([0.25, 0.5])
    x, e = torch.randn(7, 2), torch.randn(7, 2)
    out = Distill().loss(net, x, noise=e)
    (z, t, h), = net.calls
    assert torch.equal(z, e) and torch.all(t == 1) and torch.all(h == 0)
    want = ((e - x) - torch.tensor([0.25, 0.5])).square().sum(1).mean()
    torch.testing.assert_close(out.loss, want)
    torch.testing.assert_close(out.metrics["mse"], want)


def test_distill_k_steps_draws_the_grid_times():
    net = ConstNet([0.0, 0.0])
    x, e = torch.randn(4000, 2), torch.randn(4000, 2)
    Distill(k=4).loss(net, x, noise=e)
    (z, t, _), = net.calls
    values, counts = torch.unique(t, return_counts=True)
    torch.testing.assert_close(values, torch.tensor([0.25, 0.5, 0.75, 1.0]))
    assert counts.min() > 850  # ~1000 each
    torch.testing.assert_close(z, (1 - t[:, None]) * x + t[:, None] * e)
    # a given t (any value) and r = t are accepted; r != t is not
    net = ConstNet([0.0, 0.0])
    t = torch.full((4000,), 0.3)
    Distill(k=4).loss(net, x, noise=e, t=t, r=t)
    assert torch.all(net.calls[0][1] == 0.3)
    with pytest.raises(UserError, match="r must equal t"):
        Distill().loss(net, x, noise=e, t=t, r=t / 2)


def test_distill_sampling_takes_k_euler_steps():
    a, e = 0.7, torch.randn(5, 3)
    for k in (1, 3):
        net = ConstNet(torch.zeros(3), a=a)
        m = Distill(k=k)
        x = m.sample(net, e, steps=m.default_steps)
        torch.testing.assert_close(x, e * (1 - a / k) ** k)
        assert [float(t[0]) for _, t, _ in net.calls] == pytest.approx([1 - i / k for i in range(k)])


def test_distill_lpips_compares_the_one_step_estimate(monkeypatch):
    import meanflow.methods.consistency as consistency

    seen = {}

    def fake_distance(a, b, metric, **kw):
        seen.update(a=a, b=b, metric=metric, **kw)
        return (a - b).square().flatten(1).sum(1)

    monkeypatch.setattr(consistency, "distance", fake_distance)
    net = ConstNet(torch.zeros(1, 4, 4), a=0.5)
    x, e = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    t = torch.tensor([1.0, 0.5, 0.25])
    Distill(k=4, metric="lpips", lpips_weights="w.safetensors").loss(net, x, noise=e, t=t)
    z = (1 - t[:, None, None, None]) * x + t[:, None, None, None] * e
    torch.testing.assert_close(seen["a"], z - t[:, None, None, None] * 0.5 * z)
    assert seen["b"] is x and seen["metric"] == "lpips" and seen["lpips_weights"] == "w.safetensors"


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "k must be an integer >= 1"), ({"k": 2.5}, "k must be"), ({"k": True}, "k must be"),
    ({"metric": "l1"}, "unknown metric"), ({"metric": "lpips"}, "needs lpips_weights"),
    ({"lpips_weights": "w"}, "metric is 'l2'"),
])
def test_distill_validation(kwargs, message):
    with pytest.raises(UserError, match=message):
        Distill(**kwargs)


def test_reflow_validation():
    with pytest.raises(UserError, match="unknown solver"):
        Reflow(solver="rk4")
    with pytest.raises(UserError, match="unknown time_dist"):
        Reflow(time_dist="beta")


def test_gradients_reach_every_parameter():
    for method in (Reflow(), Distill(), Distill(k=3)):
        net = TinyNet(shape=(3,), hidden=16, depth=2, num_classes=2)
        x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        method.loss(net, x, y, noise=torch.randn(8, 3)).loss.backward()
        for name, p in net.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (method, name)


def test_velocity_field_and_solve_to_data():
    net = ConstNet(torch.zeros(2), a=1.0)  # dz/dt = z: from t = 1 to 0, z_0 = z_1 / e
    fn = velocity_field(net)
    z = torch.randn(4, 2)
    torch.testing.assert_close(fn(z, torch.tensor(0.3)), z)
    assert torch.all(net.calls[0][1] == 0.3) and torch.all(net.calls[0][2] == 0)
    x, nfe = solve_to_data(net, z, solver="rk45")
    torch.testing.assert_close(x, z / math.e, atol=1e-4, rtol=1e-4)
    assert nfe > 6
    assert solve_to_data(net, z, solver="euler", steps=7)[1] == 7
    assert solve_to_data(net, z, solver="heun", steps=7)[1] == 14
