"""ScoreSDE: loss value, samplers and likelihood against the exact score of Gaussian data, options.

For data ``x ~ N(mu, s^2 I)`` the marginal at t is ``N(alpha mu, S_t^2 I)`` with
``S_t^2 = alpha^2 s^2 + sigma^2``, so the exact noise prediction is
``eps_hat = sigma (z - alpha mu) / S_t^2``, and the probability-flow ODE keeps the standardised
coordinate fixed: ``z_r = alpha_r mu + (S_r / S_t) (z_t - alpha_t mu)``.
"""

import math

import pytest
import torch
from method_testnets import SpyNet, TinyNet
from torch import nn

from meanflow.errors import UserError
from meanflow.methods import ScoreSDE, build_method

SDES = ["vp", "subvp", "ve"]
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
S = 0.5


class GaussianEps(nn.Module):
    """The exact ``eps_hat(z, t)`` of data ``N(mu, s^2 I)`` on a path (``net(z, t, h, y)``)."""

    def __init__(self, path, mu, s):
        super().__init__()
        self.path, self.s = path, float(s)
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.calls = 0

    def stats(self, t):
        """``(alpha mu, S_t)`` for a 0-dim or ``[B]`` time ``t``."""
        a, sig = self.path.alpha(t), self.path.sigma(t)
        return a[..., None] * self.mu, torch.sqrt(a**2 * self.s**2 + sig**2)[..., None]

    def forward(self, z, t, h, y=None):
        self.calls += 1
        assert torch.all(h == 0) and torch.all(t > 0) and torch.all(t <= 1)
        mean, std = self.stats(t.double())
        return (self.path.sigma(t.double())[:, None] * (z.double() - mean) / std**2).to(z.dtype)


pytestmark = pytest.mark.usefixtures("one_thread")


def _noise(n=4000, seed=0):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _check_moments(x, atol_mean, atol_cov):
    torch.testing.assert_close(x.mean(0), MU, atol=atol_mean, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), S**2 * torch.eye(2, dtype=x.dtype), atol=atol_cov, rtol=0)


@pytest.mark.parametrize("sde", SDES)
def test_probability_flow_ode_is_the_exact_transport(sde):
    method = ScoreSDE(sde=sde, sampler="ode", denoise=False)
    net = GaussianEps(method.path, MU, S)
    e = _noise(500)
    x, nfe = method.sample_with_nfe(net, e)
    (m1, s1), (me, se) = net.stats(torch.tensor(1.0)), net.stats(torch.tensor(method.final_eps))
    exact = me + se / s1 * (method.path.prior_std * e - m1)
    torch.testing.assert_close(x, exact, atol=1e-4, rtol=0)  # measured <= 1.5e-5 (rtol = atol = 1e-5)
    assert nfe == net.calls and 50 < nfe < 200


@pytest.mark.parametrize("sde", SDES)
@pytest.mark.parametrize("solver", ["rk45", "heun"])
def test_ode_sampler_reaches_the_data_distribution(sde, solver):
    method = ScoreSDE(sde=sde, sampler="ode", ode_solver=solver)
    x, nfe = method.sample_with_nfe(GaussianEps(method.path, MU, S), _noise(4000, seed=1), steps=100)
    _check_moments(x, 0.03, 0.02)  # 4000 samples: standard errors ~0.008 (mean), ~0.006 (cov)
    assert nfe == 201 if solver == "heun" else 50 < nfe < 200  # Heun: 2 per step + the denoising step


@pytest.mark.parametrize("sde", SDES)
def test_pc_sampler_reaches_the_data_distribution(sde):
    """The reference's per-SDE default (VP / sub-VP: Euler-Maruyama; VE: reverse diffusion + Langevin)."""
    method = ScoreSDE(sde=sde)
    net = GaussianEps(method.path, MU, S)
    gen = torch.Generator().manual_seed(0)
    x, nfe = method.sample_with_nfe(net, _noise(3000, seed=1), steps=500, generator=gen)
    assert nfe == net.calls == (1000 if sde == "ve" else 500)
    _check_moments(x, 0.05, 0.04)


@pytest.mark.parametrize("kwargs", [dict(predictor="reverse_diffusion"), dict(corrector="langevin"),
                                    dict(sde="ve", predictor="euler_maruyama", corrector="none"),
                                    dict(sde="subvp", predictor="reverse_diffusion", corrector="langevin"),
                                    dict(sde="ve", predictor="none", corrector_steps=2)])
def test_other_predictors_and_correctors(kwargs):
    method = ScoreSDE(**kwargs)
    net = GaussianEps(method.path, MU, S)
    gen = torch.Generator().manual_seed(0)
    x, nfe = method.sample_with_nfe(net, _noise(2000, seed=2), steps=400, generator=gen)
    corrections = method.corrector_steps if method.corrector_name == "langevin" else 0
    per_step = (method.predictor_name != "none") + corrections
    assert nfe == 400 * per_step
    _check_moments(x, 0.06 if method.predictor_name != "none" else 0.1, 0.06)


def _exact_flow_bpd(method, net, x):
    """Bits/dim the exact PF-ODE gives with the prior N(0, P^2 I): the flow from eps to 1 is affine."""
    (m1, s1), (me, se) = net.stats(torch.tensor(1.0)), net.stats(torch.tensor(method.eps))
    z1 = m1 + s1 / se * (x - me)
    logp = method.path.prior_logp(z1) + x.shape[1] * torch.log(s1 / se)[0]
    return -logp / (x.shape[1] * math.log(2))


POINTS = torch.tensor([[1.0, -0.5], [0.3, 0.2], [2.0, -1.5], [-1.0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("sde", SDES)
def test_bits_per_dim_of_gaussian_data(sde):
    method = ScoreSDE(sde=sde)
    # mu = 0: p_1 is the prior up to ~1e-4 in variance, so the answer is nearly the data density
    # (the remaining prior mismatch costs up to 1e-3 bits/dim at |x| ~ 5 s under VE).
    net = GaussianEps(method.path, torch.zeros(2), S)
    bpd = method.bits_per_dim(net, POINTS, generator=torch.Generator().manual_seed(0))
    var = (net.stats(torch.tensor(method.eps))[1] ** 2).item()  # s^2 + sigma(eps)^2
    exact = ((POINTS**2).sum(1) / (2 * var) + math.log(2 * math.pi * var)) / (2 * math.log(2))
    torch.testing.assert_close(bpd, exact, atol=2e-3, rtol=0)  # measured <= 1.0e-3 (VE), 6.7e-4 (sub-VP)
    # mu != 0: the prior mismatch at t = 1 (up to 0.04 bits/dim for VE) is what the exact flow gives.
    net = GaussianEps(method.path, MU, S)
    bpd = method.bits_per_dim(net, POINTS, dequant_offset=7.0)
    exact = _exact_flow_bpd(method, net, POINTS)
    torch.testing.assert_close(bpd - 7.0, exact, atol=5e-4, rtol=0)  # measured <= 1.9e-4


def test_gaussian_hutchinson_probe_scales_the_divergence():
    """With an isotropic Jacobian c(t) I the Gaussian probe n gives c(t) ||n||^2 instead of c(t) D."""
    method = ScoreSDE()
    net = GaussianEps(method.path, MU, S)
    bpd = method.bits_per_dim(net, POINTS, hutchinson="gaussian", generator=torch.Generator().manual_seed(3))
    n = torch.randn(POINTS.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (m1, s1), (me, se) = net.stats(torch.tensor(1.0)), net.stats(torch.tensor(method.eps))
    logp = method.path.prior_logp(m1 + s1 / se * (POINTS - me)) + n.square().sum(1) * torch.log(s1 / se)[0]
    torch.testing.assert_close(bpd, -logp / (2 * math.log(2)), atol=5e-4, rtol=0)


@pytest.mark.parametrize("sde", SDES)
@pytest.mark.parametrize("weighting", [False, True])
def test_loss_matches_a_float64_transcription(sde, weighting):
    torch.manual_seed(0)
    net = TinyNet(shape=(2, 3), hidden=16).double()
    x, e = torch.randn(6, 2, 3, dtype=torch.float64), torch.randn(6, 2, 3, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64) * 0.98 + 0.01
    out = ScoreSDE(sde=sde, likelihood_weighting=weighting).loss(net, x, noise=e, t=t)
    tb = t[:, None, None]
    if sde == "ve":
        alpha, sigma = torch.ones_like(tb), 0.01 * 5000**tb
        g2 = sigma**2 * 2 * math.log(5000)
    else:
        log_alpha = -0.25 * tb**2 * 19.9 - 0.5 * tb * 0.1
        alpha = torch.exp(log_alpha)
        sigma = torch.sqrt(1 - alpha**2) if sde == "vp" else 1 - alpha**2
        beta = 0.1 + tb * 19.9
        g2 = beta if sde == "vp" else beta * (1 - torch.exp(-2 * 0.1 * tb - 19.9 * tb**2))
    eps_hat = net(alpha * x + sigma * e, t, torch.zeros_like(t))
    score = -eps_hat / sigma
    per_sample = ((sigma * score + e) ** 2).sum((1, 2))
    weight = (g2 / sigma**2)[:, 0, 0] if weighting else 1.0
    torch.testing.assert_close(out.loss.double(), (weight * per_sample).mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.metrics["mse"].double(), per_sample.mean(), rtol=1e-5, atol=0)


def test_loss_draws_times_in_eps_one_with_h_zero():
    net = SpyNet(scale=0.5)
    ScoreSDE(eps=0.3).loss(net, torch.randn(4096, 2))
    (t, h, _), = net.calls
    assert t.min() >= 0.3 and t.max() <= 1 and torch.all(h == 0)
    assert abs(float(t.mean()) - 0.65) < 0.02


def test_loss_gradients_reach_every_parameter():
    net = TinyNet(shape=(3,), hidden=16, depth=3, num_classes=2)
    ScoreSDE(sde="ve").loss(net, torch.randn(8, 3), torch.randint(0, 3, (8,))).loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kwargs", [dict(), dict(sampler="ode", ode_solver="euler")])
def test_sampling_is_reproducible_and_passes_net_kwargs(kwargs):
    class KwNet(nn.Module):
        def forward(self, z, t, h, y=None, *, extra):
            return 0.1 * z + extra

    method = ScoreSDE(sde="ve", **kwargs)
    e, extra = torch.randn(5, 2), torch.randn(5, 2)
    run = lambda seed: method.sample(KwNet(), e, steps=30, net_kwargs={"extra": extra},  # noqa: E731
                                     generator=torch.Generator().manual_seed(seed))
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and a.shape == e.shape and torch.isfinite(a).all()
    assert torch.equal(a, c) == (method.sampler == "ode")  # the ODE sampler is deterministic


def test_defaults_follow_the_reference():
    vp, ve = ScoreSDE(), ScoreSDE(sde="ve")
    assert (vp.predictor_name, vp.corrector_name, vp.final_eps) == ("euler_maruyama", "none", 1e-3)
    assert (ve.predictor_name, ve.corrector_name, ve.final_eps) == ("reverse_diffusion", "langevin", 1e-5)
    assert ve.snr == 0.16 and ve.corrector_steps == 1 and ScoreSDE.default_steps == 1000
    assert isinstance(build_method("score_sde", sde="subvp", sampler="ode"), ScoreSDE)


@pytest.mark.parametrize("kwargs", [dict(sde="vpsde"), dict(sampler="ddim"), dict(predictor="ancestral"),
                                    dict(corrector="ald"), dict(predictor="none", corrector="none"),
                                    dict(eps=0.0), dict(sample_eps=1.5), dict(snr=0.0),
                                    dict(corrector_steps=0), dict(ode_solver="dopri"), dict(rtol=0.0),
                                    dict(beta_min=-1.0),
                                    dict(sde="ve", sigma_min=60.0)])
def test_bad_options_raise_one_line(kwargs):
    with pytest.raises(UserError) as err:
        ScoreSDE(**kwargs)
    assert "\n" not in str(err.value)


def test_bad_sampling_arguments_raise():
    method, net, e = ScoreSDE(), SpyNet(), torch.randn(2, 2)
    with pytest.raises(UserError, match="schedule"):
        method.sample(net, e, schedule=torch.tensor([1.0, 0.0]))
    with pytest.raises(UserError, match="steps"):
        method.sample(net, e, steps=0)
    with pytest.raises(UserError, match="beta_max"):  # DDPM's chain needs more levels than beta_max
        ScoreSDE(predictor="reverse_diffusion").sample(net, e, steps=10)
    with pytest.raises(UserError, match="hutchinson"):
        method.bits_per_dim(net, e, hutchinson="uniform")
