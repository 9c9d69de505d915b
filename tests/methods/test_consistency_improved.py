"""ImprovedConsistencyTraining (iCT): N(k) doubling, log-normal pairs, lambda, pseudo-Huber, stopgrad."""

import math

import pytest
import torch
from method_testnets import SpyNet, TinyNet

from meanflow.errors import UserError
from meanflow.methods.base import Progress
from meanflow.methods.consistency import karras_sigmas, scalings, sigma_to_t
from meanflow.methods.improved_ct import ImprovedConsistencyTraining, ict_num_scales, lognormal_index_probs


def test_curriculum_doubles_at_the_paper_points():
    # K = 400k, s0 = 10, s1 = 1280: floor(1280/10) = 128, log2 128 = 7, K' = floor(400000 / 8) = 50000;
    # N = min(10 * 2^floor(k / 50000), 1280) + 1.
    K = 400_000
    ks = [0, 49_999, 50_000, 100_000, 150_000, 200_000, 250_000, 300_000, 349_999, 350_000, 399_999]
    expected = [11, 11, 21, 41, 81, 161, 321, 641, 641, 1281, 1281]
    assert [ict_num_scales(k, K, 10, 1280) for k in ks] == expected
    m = ImprovedConsistencyTraining()
    assert m.num_scales(Progress(100_000, K)) == 41
    # s1/s0 not a power of two: floor(150/10) = 15, log2 15 = 3.907, K' = floor(1000 / 4.907) = 203.
    assert [ict_num_scales(k, 1000, 10, 150) for k in (202, 203, 406, 609, 812)] == [11, 21, 41, 81, 151]


def test_lognormal_probabilities_by_hand_sum_and_peak():
    sig = karras_sigmas(4, 0.002, 80.0, 7.0)
    p = lognormal_index_probs(sig, -1.1, 2.0)
    cdf = [math.erf((math.log(float(s)) + 1.1) / (math.sqrt(2) * 2.0)) for s in sig]
    hand = torch.tensor([cdf[i + 1] - cdf[i] for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(p, hand / hand.sum())
    sig = karras_sigmas(1281, 0.002, 80.0, 7.0)
    p = lognormal_index_probs(sig, -1.1, 2.0)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12) and bool((p > 0).all())
    # Per unit of ln(sigma) the mass follows the normal density of ln sigma: its peak is at P_mean.
    density = p / (sig[1:].log() - sig[:-1].log())
    i = int(density.argmax())
    assert float(sig[i].log()) - 0.02 <= -1.1 <= float(sig[i + 1].log()) + 0.02


def test_pair_draws_follow_the_probabilities():
    net = SpyNet()
    m = ImprovedConsistencyTraining()
    m.loss(net, torch.randn(20_000, 2), progress=Progress(0, 400_000))  # N = 11
    grid_t = sigma_to_t(m.sigmas(11)).float()
    hi, lo = net.calls[0][0], net.calls[1][0]  # online pass, then the stop-gradient pass
    i_lo = (lo[:, None] - grid_t[None]).abs().argmin(1)
    i_hi = (hi[:, None] - grid_t[None]).abs().argmin(1)
    assert torch.equal(i_hi, i_lo + 1)
    freq = torch.bincount(i_lo, minlength=10).double() / 20_000
    torch.testing.assert_close(freq, m.index_probs(11), atol=0.012, rtol=0)


def test_loss_by_hand_with_lambda_and_pseudo_huber():
    """F = a z in both passes (one net): f = (c_skip + c_out a c_in) x_sigma; weight 1 / (hi - lo)."""
    a = 0.4
    net = SpyNet(scale=a)
    x, z = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    r = torch.tensor([0.85, 0.45, 0.1], dtype=torch.float64)
    out = ImprovedConsistencyTraining().loss(net, x, noise=z, t=t, r=r, progress=Progress(0, 10))
    hi, lo = t / (1 - t), r / (1 - r)

    def f(sigma):
        c_skip, c_out, c_in = scalings(sigma, 0.5, 0.002)
        return (c_skip + c_out * a * c_in)[:, None, None] * (x + sigma[:, None, None] * z)

    c = 0.00054 * math.sqrt(8)
    d = ((f(hi) - f(lo)).square().sum((1, 2)) + c * c).sqrt() - c
    torch.testing.assert_close(out.loss, (d / (hi - lo)).mean())
    torch.testing.assert_close(out.metrics["distance"], d.mean())
    assert float(out.metrics["N"]) == 11


def test_gradient_flows_through_the_online_pass_only():
    """d loss / d a equals the derivative with the stop-gradient pass held fixed."""
    a = 0.4
    net = SpyNet(scale=a)
    x, z = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t, r = torch.full((5,), 0.7, dtype=torch.float64), torch.full((5,), 0.6, dtype=torch.float64)
    m = ImprovedConsistencyTraining(metric="l2", weighting="uniform")
    m.loss(net, x, noise=z, t=t, r=r, progress=Progress(0, 10)).loss.backward()
    hi, lo = t / (1 - t), r / (1 - r)
    scale = torch.tensor(a, dtype=torch.float64, requires_grad=True)

    def f(s, sigma):
        c_skip, c_out, c_in = scalings(sigma, 0.5, 0.002)
        return (c_skip + c_out * s * c_in)[:, None] * (x + sigma[:, None] * z)

    ((f(scale, hi) - f(scale, lo).detach()).square().sum(1).mean()).backward()
    torch.testing.assert_close(net.scale.grad.double(), scale.grad)


def test_dropout_masks_are_shared_with_the_stopgrad_pass():
    torch.manual_seed(0)
    net = TinyNet(shape=(2,), hidden=32, depth=3, dropout=0.5).train()
    x, z, t = torch.randn(16, 2), torch.randn(16, 2), torch.full((16,), 0.6)
    r = t - 1e-7
    loss = {s: ImprovedConsistencyTraining(share_dropout_rng=s).loss(
        net, x, noise=z, t=t, r=r, progress=Progress(0, 1)).metrics["distance"] for s in (True, False)}
    assert float(loss[True]) < 1e-3 < float(loss[False])


def test_needs_only_progress():
    assert ImprovedConsistencyTraining.needs == frozenset({"progress"})
    with pytest.raises(UserError, match="progress"):
        ImprovedConsistencyTraining().loss(SpyNet(), torch.randn(2, 2))


@pytest.mark.parametrize("kwargs", [dict(s0=0), dict(s0=20, s1=10), dict(p_std=0.0), dict(index_dist="beta"),
                                    dict(weighting="snr")])
def test_invalid_fields_raise(kwargs):
    with pytest.raises(UserError):
        ImprovedConsistencyTraining(**kwargs)
