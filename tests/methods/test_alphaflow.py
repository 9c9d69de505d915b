"""α-Flow: the curriculum, both targets and the loss against float64 transcriptions of the official
formulas (snap-research/alphaflow@b0fef77, src/training/loss.py), guidance, samplers, options."""

import math

import pytest
import torch
from method_testnets import TinyNet

from meanflow.errors import UserError
from meanflow.methods import build_method
from meanflow.methods.alphaflow import AlphaFlow, alpha_at
from meanflow.methods.base import Progress
from meanflow.methods.meanflow import MeanFlow


def _official_ratio(step, init, end, a0=1.0, a1=0.0, gamma=25.0, clamp=0.005):
    """`get_ratio` with the sigmoid scheduler, in steps, as the official code computes it."""
    if step < init:
        cur = a0
    elif step > end:
        cur = a1
    else:
        mid = init + (end - init) / 2
        cur = a0 + (a1 - a0) * (1 / (1 + math.exp(-(step - mid) / (end - init) * gamma)))
    return 0.0 if cur < clamp else 1.0 if cur > 1 - clamp else cur


@pytest.mark.parametrize("total,init,end", [(400_000, 0, 400_000), (1_200_000, 600_000, 1_000_000)])
def test_sigmoid_curriculum_matches_the_official_schedule(total, init, end):
    method = AlphaFlow(alpha_window=(init / total, end / total))
    for step in list(range(0, total, total // 97)) + [init, end, (init + end) // 2, total - 1]:
        got = method.alpha(Progress(step, total))
        assert got == pytest.approx(_official_ratio(step, init, end), abs=1e-12), step


def test_curriculum_values_and_snap():
    assert alpha_at(0.5) == pytest.approx(0.5)
    assert alpha_at(0.0) == 1.0 and alpha_at(1.0) == 0.0
    # 1 - sigmoid(25 (f - 0.5)) crosses 1 - 0.005 at f = 0.5 - ln(199) / 25 = 0.2883
    edge = 0.5 - math.log(199) / 25
    assert alpha_at(edge - 1e-4) == 1.0 and 0.99 < alpha_at(edge + 1e-3) < 0.995
    assert alpha_at(1 - edge + 1e-4) == 0.0 and 0.005 < alpha_at(1 - edge - 1e-3) < 0.01
    assert alpha_at(0.3, schedule="constant", start=0.25) == 0.25
    assert alpha_at(0.25, schedule="linear") == pytest.approx(0.75)
    assert alpha_at(0.1, window=(0.5, 0.8)) == 1.0 and alpha_at(0.9, window=(0.5, 0.8)) == 0.0


def _net(seed=0, classes=0):
    torch.manual_seed(seed)
    return TinyNet(shape=(2,), hidden=16, depth=2, num_classes=classes, tangent_mode=True).double()


def _batch(b=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 2, generator=g, dtype=torch.float64)
    e = torch.randn(b, 2, generator=g, dtype=torch.float64)
    a, c = torch.rand(b, generator=g, dtype=torch.float64), torch.rand(b, generator=g, dtype=torch.float64)
    t, r = torch.maximum(a, c), torch.minimum(a, c)
    r[: b // 2] = t[: b // 2]
    return x, e, t, r


def _official_loss(net, x, e, t, r, alpha, eps, clamp=None):
    """The official loss in float64: targets [dt = 0 rows; dt > 0 rows] with weights {1, α}/(err + ε)."""
    z, v = (1 - t[:, None]) * x + t[:, None] * e, e - x
    dt = alpha * (t - r)
    tgt = torch.empty_like(v)
    with torch.no_grad():
        for i in range(len(t)):
            zi, ti, ri, vi = z[i:i + 1], t[i:i + 1], r[i:i + 1], v[i:i + 1]
            if dt[i] == 0 and ri == ti:
                tgt[i] = vi
            elif dt[i] == 0:  # MeanFlow target through torch.func.jvp on (z, r, t), tangent (v, 0, 1)
                def f(z_, r_, t_):
                    return net(z_, t_, t_ - r_, None)
                _, dudt = torch.func.jvp(f, (zi, ri, ti), (vi, torch.zeros_like(ri), torch.ones_like(ti)))
                tgt[i] = vi - (ti - ri) * dudt
            else:
                s = ti - dt[i]
                u_next = torch.zeros_like(vi) if alpha == 1.0 else net(zi - dt[i] * vi, s, s - ri, None)
                m = (dt[i] * vi + (ti - dt[i] - ri) * u_next) / (ti - ri)
                tgt[i] = m if clamp is None else m.clamp(-clamp, clamp)
    pred = net(z, t, t - r, None)
    err = ((pred - tgt) ** 2).flatten(1).mean(1)
    w = torch.where(dt > 0, torch.full_like(err, alpha), torch.ones_like(err)) / (err.detach() + eps)
    return (w * err).mean()


@pytest.mark.parametrize("alpha_start", [1.0, 0.6, 0.3, 0.0])
@pytest.mark.parametrize("clamp", [None, 0.5])
def test_loss_and_gradient_equal_the_official_formula(alpha_start, clamp):
    net = _net()
    x, e, t, r = _batch()
    method = AlphaFlow(alpha_schedule="constant", alpha_start=alpha_start, clamp_target=clamp)
    prog = Progress(10, 100)
    out = method.loss(net, x, noise=e, t=t, r=r, progress=prog)
    got = torch.autograd.grad(out.loss, list(net.parameters()))
    ref = _official_loss(net, x, e, t, r, alpha_start, method.norm_eps, clamp)
    want = torch.autograd.grad(ref, list(net.parameters()))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-10)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert out.metrics["alpha"].item() == pytest.approx(alpha_start)


def test_alpha_one_is_trajectory_flow_matching_and_alpha_zero_is_meanflows_target():
    net = _net()
    x, e, t, r = _batch()
    z, v = (1 - t[:, None]) * x + t[:, None] * e, e - x
    fm = AlphaFlow(alpha_schedule="constant", alpha_start=1.0)
    tgt = fm._discrete_rows(net, z, t, r, v, 1.0, None, None, r != t)
    torch.testing.assert_close(tgt, v)
    mf = AlphaFlow(alpha_schedule="constant", alpha_start=0.0)
    _, tgt0 = mf._continuous(net, z, t, r, v, None, None)
    _, want = MeanFlow().target(net, z, t, r, v)
    torch.testing.assert_close(tgt0, want, rtol=1e-12, atol=1e-12)


def test_discrete_target_at_a_hand_computed_point():
    """With a network u(z, t, h) = z + t (elementwise), z = [1, 2], t = 0.8, r = 0.2, v = [1, -1],
    α = 0.5: dt = 0.3, s = 0.5, z_s = [0.7, 2.3], u(z_s) = [1.2, 2.8],
    target = (0.3 v + 0.3 u(z_s)) / 0.6 = [1.1, 0.9]."""
    class Lin(torch.nn.Module):
        def forward(self, z, t, h, y=None):
            return z + t[:, None]

    m = AlphaFlow()
    z = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    t, r = torch.tensor([0.8], dtype=torch.float64), torch.tensor([0.2], dtype=torch.float64)
    v = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    got = m.discrete_target(Lin(), z, t, r, v, 0.5, None)
    torch.testing.assert_close(got, torch.tensor([[1.1, 0.9]], dtype=torch.float64))


def test_batch_split_and_minmax_draw():
    m = AlphaFlow(ratio_fm=0.25)
    t, r = m.sample_t_r(10)
    assert torch.equal(t[:2], r[:2]) and bool((r[2:] < t[2:]).all())
    assert m.sample_t_r(8)[0].shape == (8,)


def test_guidance_and_dropout_only_inside_the_interval():
    torch.manual_seed(0)
    net = _net(classes=3)
    m = AlphaFlow(omega=0.5, kappa=0.3, t_min=0.2, t_max=0.7, class_dropout=1.0, num_classes=3)
    z = torch.randn(4, 2, dtype=torch.float64)
    v = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    v_g, y2 = m.guide(net, z, t, v, y)
    assert y2.tolist() == [0, 3, 3, 1]  # dropped (null = 3) only inside (0.2, 0.7)
    zero = torch.zeros_like(t)
    u_null = net(z, t, zero, torch.full_like(y, 3))
    want = 0.5 * v + 0.3 * net(z, t, zero, y2) + 0.2 * u_null
    torch.testing.assert_close(v_g[1:3], want[1:3])
    torch.testing.assert_close(v_g[[0, 3]], v[[0, 3]])


def test_samplers():
    net = _net()
    e = torch.randn(5, 2, dtype=torch.float64)
    one = AlphaFlow().sample(net, e, steps=1)
    torch.testing.assert_close(one, e - net(e, torch.ones(5, dtype=torch.float64),
                                            torch.ones(5, dtype=torch.float64), None))
    traj = AlphaFlow(sampler="trajectory").sample(net, e, steps=2)
    torch.testing.assert_close(traj, MeanFlow().sample(net, e, steps=2))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    grid = torch.tensor([1.0, 0.55, 0.0])
    got = AlphaFlow().sample(net, e, steps=2, schedule=grid, generator=g1)
    half = torch.full((5,), 0.55, dtype=torch.float64)
    x0 = e - net(e, torch.ones_like(half), torch.ones_like(half), None)
    z = 0.45 * x0 + 0.55 * torch.randn(5, 2, generator=g2, dtype=torch.float64)
    torch.testing.assert_close(got, z - 0.55 * net(z, half, half, None))


def test_options_are_checked():
    with pytest.raises(UserError, match="ratio_fm"):
        AlphaFlow(ratio_fm=1.5)
    with pytest.raises(UserError, match="alpha_window"):
        build_method("alphaflow", alpha_window=[0.8, 0.2])
    with pytest.raises(UserError, match="num_classes"):
        AlphaFlow(omega=2.0)
    with pytest.raises(UserError, match="sampler"):
        AlphaFlow(sampler="euler")
    with pytest.raises(UserError, match="progress"):
        AlphaFlow().loss(_net(), torch.randn(4, 2, dtype=torch.float64))
