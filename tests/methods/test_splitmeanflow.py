"""SplitMeanFlow: the loss and its gradient against a float64 transcription of the paper's objective
(arXiv 2507.16884; no official code), the interval-splitting identity on an exact flow map, the limit
s -> t (MeanFlow's identity), the boundary rows, the draw, the sampler and the options."""

import pytest
import torch
from method_testnets import GaussianMeanFlow, TinyNet

from meanflow.errors import UserError
from meanflow.methods import build_method
from meanflow.methods.meanflow import MeanFlow
from meanflow.methods.splitmeanflow import SplitMeanFlow


def _net(classes=0, seed=0):
    torch.manual_seed(seed)
    return TinyNet(shape=(2,), hidden=16, depth=2, num_classes=classes, tangent_mode=True).double()


def _batch(b=10, n_eq=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 2, generator=g, dtype=torch.float64)
    e = torch.randn(b, 2, generator=g, dtype=torch.float64)
    a, c = torch.rand(b, generator=g, dtype=torch.float64), torch.rand(b, generator=g, dtype=torch.float64)
    t, r = torch.maximum(a, c), torch.minimum(a, c)
    r[:n_eq] = t[:n_eq]
    lam = torch.rand(b, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (b,), generator=g)
    return x, e, t, r, lam, y


def _paper_loss(net, x, e, t, r, lam, y, p, eps):
    """Row by row: r = t -> ||u(z, t, t) - v||²; else s = (1 - λ) t + λ r, u2 = u(z_t, s, t),
    z_s = z_t - (t - s) u2, ||u(z_t, r, t) - sg[(1 - λ) u(z_s, r, s) + λ u2]||²; err / sg(err + c)^p."""
    errs = []
    for i in range(len(t)):
        xi, ei, ti, ri, li = x[i:i + 1], e[i:i + 1], t[i:i + 1], r[i:i + 1], lam[i]
        yi = None if y is None else y[i:i + 1]
        z, v = (1 - ti) * xi + ti * ei, ei - xi
        if ri == ti:
            tgt = v
        else:
            with torch.no_grad():
                s = (1 - li) * ti + li * ri
                u2 = net(z, ti, ti - s, yi)
                z_s = z - (ti - s) * u2
                tgt = (1 - li) * net(z_s, s, s - ri, yi) + li * u2
        err = (net(z, ti, ti - ri, yi) - tgt).square().sum()
        errs.append(err / (err.detach() + eps) ** p)
    return torch.stack(errs).mean()


@pytest.mark.parametrize("p, classes", [(0.0, 0), (1.0, 0), (0.5, 3)])
def test_loss_and_gradient_equal_the_papers_objective(p, classes):
    net = _net(classes)
    x, e, t, r, lam, y = _batch()
    y = y if classes else None
    m = SplitMeanFlow(norm_p=p, num_classes=classes)
    out = m.loss(net, x, y, noise=e, t=t, r=r, lam=lam)
    got = torch.autograd.grad(out.loss, list(net.parameters()))
    ref = _paper_loss(net, x, e, t, r, lam, y, p, m.norm_eps)
    want = torch.autograd.grad(ref, list(net.parameters()))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-10)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert out.metrics["frac_r_neq_t"].item() == pytest.approx(0.7)


def test_exact_flow_map_satisfies_the_identity():
    """The exact average velocity of Gaussian data: the split target equals u(z_t, r, t) for every λ."""
    net = GaussianMeanFlow(mu=[0.5, -1.0], s=0.7)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 2, generator=g, dtype=torch.float64)
    a, c = torch.rand(64, generator=g, dtype=torch.float64), torch.rand(64, generator=g, dtype=torch.float64)
    t, r = torch.maximum(a, c), torch.minimum(a, c)
    lams = (torch.rand(64, generator=g, dtype=torch.float64), torch.full((64,), 0.5, dtype=torch.float64))
    for lam in lams:
        got = SplitMeanFlow().target(net, z, t, r, lam)
        torch.testing.assert_close(got, net(z, t, t - r), rtol=1e-10, atol=1e-12)


def test_s_to_t_recovers_the_meanflow_identity():
    """u_tgt(λ) = u + λ (v_θ - (t - r) du/dt - u) + O(λ²) with v_θ = u(z, t, t), du/dt along (v_θ, 0, 1):
    the finite difference (u_tgt(λ) - u) / λ + u tends to MeanFlow's target with v := v_θ (torch JVP),
    first order in λ."""
    net = _net()
    g = torch.Generator().manual_seed(2)
    z = torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = 0.5 + 0.5 * torch.rand(8, generator=g, dtype=torch.float64)
    r = t * torch.rand(8, generator=g, dtype=torch.float64)
    u = net(z, t, t - r).detach()
    v_theta = net(z, t, torch.zeros_like(t)).detach()
    _, want = MeanFlow().target(net, z, t, r, v_theta)
    errs = []
    for lam in (1e-2, 1e-3, 1e-4):
        tgt = SplitMeanFlow().target(net, z, t, r, torch.full_like(t, lam))
        errs.append((u + (tgt - u) / lam - want).abs().max().item())
    assert errs[2] < 1e-3, errs
    assert [errs[0] / errs[1], errs[1] / errs[2]] == pytest.approx([10, 10], rel=0.2), errs  # first order


def test_boundary_rows_are_flow_matching():
    net = _net()
    x, e, t, _, lam, _ = _batch()
    out = SplitMeanFlow().loss(net, x, noise=e, t=t, lam=lam)
    z, v = (1 - t[:, None]) * x + t[:, None] * e, e - x
    want = (net(z, t, torch.zeros_like(t)) - v).square().sum(dim=1).mean()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-12)
    assert out.metrics["frac_r_neq_t"].item() == 0.0


def test_draw_puts_the_moving_rows_first():
    m = SplitMeanFlow(ratio=0.25)
    t, r = m.sample_t_r(4000)
    assert t.shape == r.shape == (4000,)
    assert bool((r[:1000] < t[:1000]).all()) and torch.equal(t[1000:], r[1000:])
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() > -0.4  # the max of two LN(-0.4, 1) draws, as MeanFlow's sort pairing
    t2, r2 = SplitMeanFlow(ratio=0.5, time_pairing="min", r_mean=-2.0).sample_t_r(10)
    assert bool((r2[:5] <= t2[:5]).all()) and torch.equal(t2[5:], r2[5:])


def test_drawn_batch_runs_with_labels_and_dropout():
    net = _net(classes=3)
    m = SplitMeanFlow(num_classes=3, class_dropout=0.5)
    x, y = torch.randn(16, 2, dtype=torch.float64), torch.randint(0, 3, (16,))
    torch.manual_seed(0)
    a = m.loss(net, x, y)
    torch.manual_seed(0)
    b = m.loss(net, x, y)
    assert a.loss.item() == b.loss.item() and a.metrics["frac_r_neq_t"].item() == 0.25
    a.loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_sampler_is_meanflows():
    net = _net()
    e = torch.randn(5, 2, dtype=torch.float64)
    for steps in (1, 2, 4):
        want = MeanFlow().sample(net, e, steps=steps)
        torch.testing.assert_close(SplitMeanFlow().sample(net, e, steps=steps), want)
    grid = torch.tensor([1.0, 0.6, 0.0])
    want = MeanFlow().sample(net, e, schedule=grid)
    torch.testing.assert_close(SplitMeanFlow().sample(net, e, schedule=grid), want)
    imgs = SplitMeanFlow().sample(TinyNet(shape=(1, 4, 4)), torch.randn(3, 1, 4, 4), steps=2)
    assert imgs.shape == (3, 1, 4, 4)


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": -0.1}, "ratio"),
    ({"time_pairing": "max"}, "time_pairing"),
    ({"norm_p": -1.0}, "norm_p"),
    ({"norm_eps": 0.0}, "norm_eps"),
    ({"class_dropout": 0.1}, "needs num_classes"),
    ({"num_classes": 2.5}, "num_classes"),
    ({"time_dist": "beta"}, "time_dist"),
])
def test_options_are_checked(kwargs, match):
    with pytest.raises(UserError, match=match) as err:
        SplitMeanFlow(**kwargs)
    assert "\n" not in str(err.value)


def test_registry_and_overrides():
    m = build_method("splitmeanflow", ratio=0.5)
    assert isinstance(m, SplitMeanFlow) and m.needs == frozenset() and m.norm_p == 0.0
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    with pytest.raises(UserError, match="r must be <= t"):
        m.loss(_net(), x, t=t, r=t + 0.1)
    with pytest.raises(UserError, match="shape"):
        m.loss(_net(), x, lam=t[:2])
