"""MeanFlow: the target against an analytic answer, reductions to flow matching, guidance, sampling."""

import pytest
import torch
from method_testnets import GaussianMeanFlow, SpyNet, TinyNet
from torch import nn

from meanflow.errors import UserError
from meanflow.methods import FlowMatching, MeanFlow
from meanflow.methods.jvp import jvp

MU = torch.tensor([0.7, -1.2, 0.3], dtype=torch.float64)
S = 0.5


def _zrt(b=64):
    t = torch.rand(b, dtype=torch.float64) * 0.8 + 0.15
    r = t * torch.rand(b, dtype=torch.float64) * 0.9
    x = MU + S * torch.randn(b, 3, dtype=torch.float64)
    e = torch.randn(b, 3, dtype=torch.float64)
    z = (1 - t[:, None]) * x + t[:, None] * e
    return z, r, t


def test_target_equals_true_average_velocity_for_gaussian_data():
    """Feeding the exact u* and the marginal velocity gives u_tgt == u* (the MeanFlow identity)."""
    oracle = GaussianMeanFlow(MU, S)
    z, r, t = _zrt()
    v = oracle.velocity(z, t)
    u, u_tgt = MeanFlow().target(oracle, z, t, r, v)
    torch.testing.assert_close(u_tgt, u, rtol=1e-9, atol=1e-9)
    # Sanity of the oracle: u at h = t - r > 0 differs from v (the net's job is not trivial).
    assert (u - v).abs().max() > 0.05


@pytest.mark.parametrize("tangent_zrt", [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)])
def test_wrong_tangents_give_a_wrong_target(tangent_zrt):
    """The paper's ablation tangents (v,0,0), (v,1,0), (v,1,1) on (z, r, t) miss u*."""
    dr, dt = tangent_zrt
    oracle = GaussianMeanFlow(MU, S)
    z, r, t = _zrt()
    v = oracle.velocity(z, t)
    ones = torch.ones_like(t)
    u, dudt = jvp(oracle, z, t, t - r, None, v, dt * ones, (dt - dr) * ones)
    u_tgt = v - (t - r)[:, None] * dudt
    assert (u_tgt - u).abs().max() > 1e-2


def test_loss_is_zero_for_exact_model_of_point_mass():
    """With s = 0 the conditional velocity e - x is the marginal one, so the whole loss is 0."""
    oracle = GaussianMeanFlow(MU, 0.0)
    b = 32
    x = MU.expand(b, 3).clone()
    t = torch.rand(b, dtype=torch.float64) * 0.8 + 0.15
    r = t * torch.rand(b, dtype=torch.float64)
    out = MeanFlow(ratio=1.0).loss(oracle, x, t=t, r=r)
    assert out.loss.dtype == torch.float64
    assert float(out.metrics["mse"]) < 1e-18


@pytest.mark.parametrize("tangent_mode", [True, False])
def test_ratio_zero_plain_l2_equals_flow_matching(tangent_mode):
    net = TinyNet(shape=(2, 2), hidden=16, tangent_mode=tangent_mode)
    x = torch.randn(16, 2, 2)
    noise = torch.randn_like(x)
    t = torch.rand(16)
    mf = MeanFlow(ratio=0.0, norm_p=0.0).loss(net, x, noise=noise, t=t)
    fm = FlowMatching().loss(net, x, noise=noise, t=t)
    torch.testing.assert_close(mf.loss, fm.loss)
    assert float(mf.metrics["frac_r_neq_t"]) == 0.0
    # ratio = 0 draws r = t everywhere.
    mf_drawn = MeanFlow(ratio=0.0).sample_t_r(100)
    assert torch.equal(mf_drawn[0], mf_drawn[1])


def test_adaptive_weight_formula():
    net = TinyNet(shape=(3,), hidden=16)
    x, noise = torch.randn(1, 3), torch.randn(1, 3)
    t, r = torch.tensor([0.8]), torch.tensor([0.3])
    for p, c in [(0.0, 0.01), (0.5, 0.01), (1.0, 0.01), (0.75, 1e-3)]:
        out = MeanFlow(norm_p=p, norm_eps=c).loss(net, x, noise=noise, t=t, r=r)
        err = out.metrics["mse"]  # batch of one: mean per-sample error = err
        torch.testing.assert_close(out.loss.detach(), err / (err + c) ** p)


def test_gradient_is_stopgrad_weighted_error():
    """d loss / d u = 2 (u - u_tgt) / (err + c)^p: neither the weight nor the target is differentiated."""
    z_param = nn.Parameter(torch.randn(4, 3))

    class Free(nn.Module):  # output independent of inputs: u = parameter
        def forward(self, z, t, h, y=None):
            return z_param + 0 * z

    x, noise = torch.randn(4, 3), torch.randn(4, 3)
    t, r = torch.full((4,), 0.9), torch.full((4,), 0.2)
    out = MeanFlow(norm_p=1.0, norm_eps=0.01).loss(Free(), x, noise=noise, t=t, r=r)
    out.loss.backward()
    v = noise - x  # du/dt = 0 here, so the target is v
    err = ((z_param - v) ** 2).sum(1, keepdim=True)
    expected = 2 * (z_param - v) / (err + 0.01) / 4
    torch.testing.assert_close(z_param.grad, expected.detach())


@pytest.mark.parametrize("tangent_mode", [True, False])
def test_gradients_reach_every_parameter(tangent_mode):
    net = TinyNet(shape=(3,), hidden=16, depth=3, num_classes=3, tangent_mode=tangent_mode)
    method = MeanFlow(ratio=0.5, omega=1.5, kappa=0.3, class_dropout=0.3, num_classes=3)
    x, y = torch.randn(32, 3), torch.randint(0, 3, (32,))
    out = method.loss(net, x, y)
    out.loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert {"loss", "mse", "u_v_mse", "frac_r_neq_t"} <= set(out.metrics)
    assert float(out.metrics["frac_r_neq_t"]) == pytest.approx(0.5, abs=1 / 32)


def test_loss_is_float32_under_autocast():
    net = TinyNet(shape=(3,), hidden=16, tangent_mode=True)
    x, noise = torch.randn(8, 3), torch.randn(8, 3)
    t, r = torch.rand(8), torch.rand(8) * 0.1
    t = torch.maximum(t, r)
    ref = MeanFlow().loss(net, x, noise=noise, t=t, r=r).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = MeanFlow().loss(net, x, noise=noise, t=t, r=r).loss
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


class ClassConst(nn.Module):
    """u = c[y] (per class constant vector), independent of z, t, h; records calls."""

    def __init__(self, num_classes, dim):
        super().__init__()
        self.c = nn.Parameter(torch.randn(num_classes + 1, dim))
        self.num_classes = num_classes
        self.ys = []

    def forward(self, z, t, h, y=None):
        if y is None:
            y = torch.full((z.shape[0],), self.num_classes, dtype=torch.long)
        self.ys.append(y.clone())
        return self.c[y] + 0 * z


def test_guided_velocity_formula_and_interval():
    net = ClassConst(num_classes=3, dim=2)
    m = MeanFlow(omega=2.0, kappa=0.3, t_start=0.2, t_end=0.7, num_classes=3)
    z, v = torch.randn(4, 2), torch.randn(4, 2)
    t = torch.tensor([0.1, 0.2, 0.5, 0.9])
    y = torch.tensor([0, 1, 2, 0])
    v_g = m.guided_velocity(net, z, t, v, y)
    inside = 2.0 * v + (1 - 2.0 - 0.3) * net.c[3] + 0.3 * net.c[y]
    expected = torch.where(((t >= 0.2) & (t <= 0.7))[:, None], inside, v)
    torch.testing.assert_close(v_g, expected.detach())
    assert not v_g.requires_grad


def test_unit_guidance_is_no_guidance():
    net = ClassConst(num_classes=3, dim=2)
    z, v, t = torch.randn(5, 2), torch.randn(5, 2), torch.rand(5)
    y = torch.randint(0, 3, (5,))
    m = MeanFlow(omega=1.0, kappa=0.0, num_classes=3)
    torch.testing.assert_close(m.guided_velocity(net, z, t, v, y), v)
    # And through the loss: same as an unconditional-target run on the same draws.
    x, noise = torch.randn(5, 2), torch.randn(5, 2)
    r = t * 0.5
    a = m.loss(net, x, y, noise=noise, t=t, r=r).loss
    b = MeanFlow(num_classes=3, omega=1.5, t_start=0.0, t_end=0.0).loss(net, x, y, noise=noise, t=t, r=r).loss
    torch.testing.assert_close(a, b)  # guidance interval excluding every t == no guidance


def test_class_dropout_sends_null_label_and_plain_velocity():
    net = ClassConst(num_classes=3, dim=2)
    m = MeanFlow(omega=3.0, class_dropout=1.0, num_classes=3)
    x, noise = torch.randn(6, 2), torch.randn(6, 2)
    t = torch.rand(6)
    y = torch.randint(0, 3, (6,))
    out = m.loss(net, x, y, noise=noise, t=t, r=t * 0.5)
    assert torch.equal(net.ys[-1], torch.full((6,), 3))  # the trained call sees the null class
    # All dropped: target is v (u is constant in z, t so du/dt = 0).
    v = noise - x
    expected = ((net.c[3] - v) ** 2).sum(1).mean()
    torch.testing.assert_close(out.metrics["mse"], expected.detach())


def test_one_step_sample_is_one_forward_at_t1_h1():
    net = SpyNet(scale=0.5)
    e = torch.randn(7, 2, 3)
    x = MeanFlow().sample(net, e)
    assert x.shape == e.shape and not x.requires_grad
    (t, h, _), = net.calls
    assert torch.all(t == 1) and torch.all(h == 1)
    torch.testing.assert_close(x, e - 0.5 * e)


def test_multi_step_sample_follows_schedule():
    net = SpyNet(scale=0.5)
    e = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 3])
    sched = torch.tensor([1.0, 0.7, 0.2, 0.0])
    x = MeanFlow().sample(net, e, y, schedule=sched)
    ts = [float(c[0][0]) for c in net.calls]
    hs = [float(c[1][0]) for c in net.calls]
    assert ts == pytest.approx([1.0, 0.7, 0.2]) and hs == pytest.approx([0.3, 0.5, 0.2])
    assert all(torch.equal(c[2], y) for c in net.calls)
    torch.testing.assert_close(x, e * (1 - 0.15) * (1 - 0.25) * (1 - 0.1))
    net.calls.clear()
    MeanFlow().sample(net, e, steps=4)
    assert [float(c[0][0]) for c in net.calls] == pytest.approx([1.0, 0.75, 0.5, 0.25])


@pytest.mark.parametrize(
    "sched, steps",
    [([1.0, 0.5, 0.6, 0.0], 1), ([1.0, 0.5], 1), ([0.9, 0.0], 1), ([1.0, 0.5, 0.0], 3)],
)
def test_bad_schedules_raise(sched, steps):
    with pytest.raises(UserError):
        MeanFlow().sample(SpyNet(), torch.randn(2, 2), steps=steps, schedule=torch.tensor(sched))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(ratio=-0.1), dict(ratio=1.5), dict(norm_p=-1.0), dict(norm_eps=0.0),
        dict(time_dist="beta"), dict(time_pairing="max"), dict(t_std=0.0),
        dict(t_start=0.8, t_end=0.2, num_classes=10), dict(t_end=1.5, num_classes=10),
        dict(kappa=1.0, num_classes=10), dict(omega=0.0, num_classes=10),
        dict(class_dropout=1.2, num_classes=10), dict(num_classes=-1), dict(omega=2.0),
        dict(compile="yes"),
    ],
)
def test_invalid_hyper_parameters_raise(kwargs):
    with pytest.raises(UserError):
        MeanFlow(**kwargs)


def test_bad_overrides_raise():
    net = TinyNet(shape=(3,))
    x = torch.randn(4, 3)
    with pytest.raises(UserError):
        MeanFlow().loss(net, x, t=torch.full((4,), 0.2), r=torch.full((4,), 0.5))
    with pytest.raises(UserError):
        MeanFlow().loss(net, x, noise=torch.randn(4, 2))
