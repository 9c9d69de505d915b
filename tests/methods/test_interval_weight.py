"""Kim et al.'s interval curriculum as a MeanFlow option: β at hand-computed points, λ, the loss."""

import pytest
import torch
from method_testnets import TinyNet

from meanflow.errors import UserError
from meanflow.methods import MeanFlow
from meanflow.methods.base import Progress, per_sample_sq
from meanflow.methods.interval_weight import interval_lambda, kim_beta


def test_beta_at_hand_computed_points():
    t, r = torch.tensor([0.9, 0.4]), torch.tensor([0.1, 0.4])
    # Δt = 0.8, λ = 2: s = 1 -> 2 * 0.2 = 0.4; s = 0.5 -> 0.5 + 2 * 0.5 * 0.2 = 0.7; s = 0 -> 1
    torch.testing.assert_close(kim_beta(t, r, 0.0, 1.0, 2.0), torch.tensor([0.4, 1.0]))
    torch.testing.assert_close(kim_beta(t, r, 0.5, 1.0, 2.0), torch.tensor([0.7, 1.0]))
    torch.testing.assert_close(kim_beta(t, r, 0.25, 0.5, 2.0), torch.tensor([0.7, 1.0]))  # s = 1 - 0.5
    torch.testing.assert_close(kim_beta(t, r, 1.0, 1.0, 2.0), torch.tensor([1.0, 1.0]))


def test_lambda_makes_beta_average_one():
    # uniform sorted pair: E|a - b| = 1/3, so E[1 - Δt] = 2/3 and λ = 1.5
    lam = interval_lambda(time_dist="uniform", t_mean=0.0, t_std=1.0, r_mean=0.0, r_std=1.0, pairing="sort")
    assert lam == pytest.approx(1.5, abs=5e-3)
    m = MeanFlow(interval_weight="kim", ratio=1.0)
    t, r = m.sample_t_r(200_000, generator=torch.Generator().manual_seed(1))
    assert m.interval_beta(t, r, Progress(0, 10)).mean().item() == pytest.approx(1.0, abs=5e-3)


def test_loss_is_beta_times_the_adaptive_loss():
    torch.manual_seed(0)
    net = TinyNet(shape=(2,), hidden=16, depth=2, tangent_mode=True).double()
    x, e = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64)
    r = t * torch.tensor([0.2, 0.5, 1, 1, 0.1, 1, 0.7, 1], dtype=torch.float64)
    plain, kim = MeanFlow(), MeanFlow(interval_weight="kim")
    z, v = (1 - t[:, None]) * x + t[:, None] * e, e - x
    u, tgt = plain.target(net, z, t, r, v)
    err = per_sample_sq(u - tgt)
    beta = kim.interval_beta(t, r, Progress(3, 10))
    want = (beta * err / (err.detach() + 0.01)).mean()
    got = kim.loss(net, x, noise=e, t=t, r=r, progress=Progress(3, 10)).loss
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    end = kim.loss(net, x, noise=e, t=t, r=r, progress=Progress(10, 10)).loss
    assert end.item() == pytest.approx(plain.loss(net, x, noise=e, t=t, r=r).loss.item(), rel=1e-12)


def test_needs_progress_only_when_on():
    assert MeanFlow(interval_weight="kim").needs == frozenset({"progress"})
    assert MeanFlow().needs == frozenset()
    with pytest.raises(UserError, match="progress"):
        MeanFlow(interval_weight="kim").loss(TinyNet(shape=(2,)), torch.randn(4, 2))
    with pytest.raises(UserError, match="interval_weight"):
        MeanFlow(interval_weight="beta")
