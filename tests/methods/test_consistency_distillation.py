"""ConsistencyDistillation: teacher denoiser and ODE step on Gaussian data, a frozen teacher, the loss."""

import pytest
import torch
from method_testnets import GaussianMeanFlow, SpyNet, TinyNet

from meanflow.errors import UserError
from meanflow.methods.base import Progress
from meanflow.methods.consistency import karras_sigmas, scalings, sigma_to_t
from meanflow.methods.consistency_distillation import (
    ConsistencyDistillation,
    teacher_denoiser,
    teacher_ode_step,
)
from meanflow.training.target import TargetNetwork

S = 0.5  # data x ~ N(0, S^2 I)


def _gaussian_teacher(dim=3):
    return GaussianMeanFlow(torch.zeros(dim, dtype=torch.float64), S)


def _exact_flow(x_sigma, sigma_from, sigma_to):
    """The probability-flow ODE keeps x_sigma / sqrt(S^2 + sigma^2) fixed for Gaussian data."""
    return x_sigma * ((S**2 + sigma_to**2) / (S**2 + sigma_from**2)).sqrt()[:, None]


def test_teacher_denoiser_is_the_gaussian_posterior_mean():
    # E[x | x + sigma e] = S^2 / (S^2 + sigma^2) x_sigma for x ~ N(0, S^2).
    sigma = torch.tensor([0.002, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)
    x_sigma = torch.randn(5, 3, dtype=torch.float64) * 3
    d = teacher_denoiser(_gaussian_teacher(), x_sigma, sigma)
    torch.testing.assert_close(d, x_sigma * (S**2 / (S**2 + sigma**2))[:, None])


def test_heun_step_matches_the_exact_flow_and_beats_euler():
    grid = karras_sigmas(40, 0.002, 80.0, 7.0)
    hi, lo = grid[1:], grid[:-1]
    x_hi = torch.randn(39, 3, dtype=torch.float64) * (S**2 + hi**2).sqrt()[:, None]
    exact = _exact_flow(x_hi, hi, lo)
    err = {}
    for solver in ("heun", "euler"):
        out = teacher_ode_step(_gaussian_teacher(), x_hi, hi, lo, solver=solver)
        err[solver] = ((out - exact).norm(dim=1) / exact.norm(dim=1))
    assert float(err["heun"].max()) < 2e-3          # measured 1.6e-3 (largest step, near sigma ~ S)
    assert float(err["euler"].max()) > 5e-3          # measured 1.1e-2
    assert bool((err["heun"] < err["euler"]).all())  # on every one of the 39 steps
    with pytest.raises(UserError):
        teacher_ode_step(_gaussian_teacher(), x_hi, hi, lo, solver="rk4")


def test_loss_by_hand_with_a_gaussian_teacher():
    a, b = 0.3, -0.1
    net, target = SpyNet(scale=a), SpyNet(scale=b)
    x, z = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.95, 0.6, 0.3, 0.05], dtype=torch.float64)
    r = torch.tensor([0.9, 0.5, 0.25, 0.01], dtype=torch.float64)
    teacher = _gaussian_teacher()
    out = ConsistencyDistillation().loss(net, x, noise=z, t=t, r=r, target=target, teacher=teacher)
    hi, lo = t / (1 - t), r / (1 - r)
    x_hi = x + hi[:, None] * z
    x_lo = teacher_ode_step(_gaussian_teacher(), x_hi, hi, lo)

    def f(scale, x_sigma, sigma):
        c_skip, c_out, c_in = scalings(sigma, 0.5, 0.002)
        return (c_skip + c_out * scale * c_in)[:, None] * x_sigma

    torch.testing.assert_close(out.loss, (f(a, x_hi, hi) - f(b, x_lo, lo)).square().sum(1).mean())
    torch.testing.assert_close(target.calls[0][0], sigma_to_t(lo))
    assert float(out.metrics["N"]) == 40


class _FrozenProbe(torch.nn.Module):
    """A velocity teacher that records whether autograd was on when it was called."""

    def __init__(self):
        super().__init__()
        self.net = TinyNet(shape=(2,), hidden=16)
        self.grad_enabled = []

    def forward(self, z, t, h, y=None):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.net(z, t, h, y)


def test_teacher_frozen_and_gradients_reach_only_the_online_net():
    torch.manual_seed(0)
    teacher = _FrozenProbe()  # requires_grad left on: the method must not let it learn anyway
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    net = TinyNet(shape=(2,), hidden=16)
    tn = TargetNetwork(net)
    m = ConsistencyDistillation(num_scales=10)
    opt = torch.optim.Adam(list(net.parameters()) + list(teacher.parameters()), lr=1e-2)
    for k in range(5):
        out = m.loss(net, torch.randn(32, 2), progress=Progress(k, 5), target=tn.net, teacher=teacher)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        assert all(p.grad is None for p in teacher.parameters())
        assert all(p.grad is None for p in tn.net.parameters())
        assert all(p.grad is not None for p in net.parameters())
        opt.step()
        tn.update(net, m.target_decay(Progress(k, 5)))
    assert teacher.grad_enabled == [False] * 10  # Heun: two calls per loss, none with autograd
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert m.target_decay(Progress(0, 5)) == 0.95


def test_euler_calls_the_teacher_once():
    teacher = _FrozenProbe()
    m = ConsistencyDistillation(solver="euler")
    m.loss(SpyNet(), torch.randn(4, 2), target=SpyNet(), teacher=teacher)
    assert teacher.grad_enabled == [False]


def test_missing_context_raises():
    m = ConsistencyDistillation()
    with pytest.raises(UserError, match="teacher"):
        m.loss(SpyNet(), torch.randn(2, 2), target=SpyNet())
    with pytest.raises(UserError, match="target"):
        m.loss(SpyNet(), torch.randn(2, 2), teacher=SpyNet())
    assert ConsistencyDistillation.needs == frozenset({"progress", "target", "teacher"})


@pytest.mark.parametrize("kwargs", [dict(num_scales=1), dict(num_scales=2.5), dict(mu=1.5),
                                    dict(solver="rk4")])
def test_invalid_fields_raise(kwargs):
    with pytest.raises(UserError):
        ConsistencyDistillation(**kwargs)
