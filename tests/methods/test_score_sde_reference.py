"""Score SDE against the reference code (yang-song/score_sde_pytorch) where the two could differ (issue 24):
the corrector-only PC sampler's `denoise`, and the scale of the loss."""

import pytest
import torch
from method_testnets import TinyNet

from meanflow.methods import ScoreSDE
from meanflow.methods.solvers import langevin_step

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_corrector_only(method, net, noise, n, seed):
    """The reference's `pc_sampler` with `NonePredictor` and `LangevinCorrector`, step for step:
    `x, x_mean = corrector(x, t); x, x_mean = predictor(x, t)` where the predictor returns `(x, x)`, then
    `x_mean if denoise else x`: the last noisy Langevin sample either way."""
    gen = torch.Generator().manual_seed(seed)
    x = noise * method.path.prior_std
    for t in torch.linspace(1.0, method.final_eps, n, dtype=torch.float64).to(x.dtype):
        for _ in range(method.corrector_steps):
            alpha = method.path.langevin_alpha(t, n)
            x, x_mean = langevin_step(x, method.score(net, x, t), method.snr, alpha, gen)
        x_mean = x  # NonePredictor.update_fn: return x, x
    return x_mean


def test_corrector_only_returns_the_last_noisy_sample_as_the_reference():
    torch.manual_seed(0)
    net = TinyNet(shape=(2,))
    noise = torch.randn(16, 2)
    for sde in ("ve", "vp"):
        outs = {}
        for denoise in (True, False):
            method = ScoreSDE(sde=sde, predictor="none", corrector="langevin", denoise=denoise)
            outs[denoise] = method.sample(net, noise, steps=25, generator=torch.Generator().manual_seed(3))
        ref = _reference_corrector_only(method, net, noise, 25, seed=3)
        assert torch.equal(outs[True], outs[False]) and torch.equal(outs[True], ref)
    # with a predictor, denoise still returns the predictor's noise-free mean (a different tensor)
    a, b = (ScoreSDE(sde="ve", denoise=d).sample(net, noise, steps=25,
                                                 generator=torch.Generator().manual_seed(3))
            for d in (True, False))
    assert not torch.equal(a, b)


def test_loss_is_twice_the_reference_half_sum_and_d_times_its_mean():
    """The reference reduces `(score * std + z)^2` with `0.5 * sum` (reduce_mean=False) or `mean`
    (reduce_mean=True) over the dimensions; this project sums: 2x the first, D x the second."""
    torch.manual_seed(1)
    net, method = TinyNet(shape=(6,)), ScoreSDE()
    x, e, t = torch.randn(16, 6), torch.randn(16, 6), torch.rand(16) * 0.9 + 0.05
    loss = method.loss(net, x, noise=e, t=t).loss
    path = method.path
    z = path.alpha(t)[:, None] * x + path.sigma(t)[:, None] * e
    score = -net(z, t, torch.zeros_like(t)) / path.sigma(t)[:, None]
    sq = (score * path.sigma(t)[:, None] + e) ** 2
    half_sum, mean = (0.5 * sq.sum(1)).mean(), sq.mean(1).mean()
    torch.testing.assert_close(loss, 2 * half_sum)
    torch.testing.assert_close(loss, 6 * mean)
