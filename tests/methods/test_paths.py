"""Probability paths: closed forms, SDE consistency, Monte-Carlo marginals, discretisations."""

import math

import pytest
import torch

from meanflow.errors import UserError
from meanflow.methods.base import interpolate
from meanflow.methods.paths import LinearPath, SubVPPath, VEPath, VPPath

PATHS = [VPPath(), SubVPPath(), VEPath(), VPPath(0.5, 5.0), VEPath(0.1, 10.0)]
IDS = ["vp", "subvp", "ve", "vp-0.5-5", "ve-0.1-10"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_closed_forms_match_the_published_coefficients():
    t = torch.tensor([0.0, 1e-3, 0.25, 0.5, 1.0], dtype=torch.float64)
    # VP / sub-VP: alpha = exp(-t^2 (b1 - b0)/4 - t b0/2); VP std sqrt(1 - alpha^2), sub-VP 1 - alpha^2.
    alpha = torch.exp(-0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1)
    torch.testing.assert_close(VPPath().alpha(t), alpha)
    torch.testing.assert_close(VPPath().sigma(t), torch.sqrt(1 - alpha**2))
    torch.testing.assert_close(SubVPPath().alpha(t), alpha)
    torch.testing.assert_close(SubVPPath().sigma(t), 1 - alpha**2)
    beta = 0.1 + t * 19.9
    torch.testing.assert_close(VPPath().diffusion(t), torch.sqrt(beta))
    discount = 1 - torch.exp(-0.2 * t - 19.9 * t**2)
    torch.testing.assert_close(SubVPPath().diffusion(t), torch.sqrt(beta * discount))
    # VE: sigma = 0.01 * 5000^t, g = sigma sqrt(2 log 5000), mean x.
    sig = 0.01 * 5000.0**t
    torch.testing.assert_close(VEPath().sigma(t), sig)
    torch.testing.assert_close(VEPath().alpha(t), torch.ones_like(t))
    torch.testing.assert_close(VEPath().diffusion(t), sig * math.sqrt(2 * math.log(5000)))
    assert (VPPath().prior_std, SubVPPath().prior_std, VEPath().prior_std) == (1.0, 1.0, 50.0)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_drift_and_diffusion_generate_the_marginals(path):
    """For dz = f z dt + g dw: alpha' = f alpha and (sigma^2)' = 2 f sigma^2 + g^2 (autograd, float64)."""
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64, requires_grad=True)
    a = path.alpha(t)
    da = torch.autograd.grad(a.sum(), t)[0] if a.requires_grad else torch.zeros_like(a)  # VE: alpha = 1
    (dvar,) = torch.autograd.grad(path.sigma(t).square().sum(), t)
    t = t.detach()
    f, g = path.drift_coef(t), path.diffusion(t)
    torch.testing.assert_close(da, f * path.alpha(t))
    torch.testing.assert_close(dvar, 2 * f * path.sigma(t) ** 2 + g**2)
    z = torch.randn(50, 3, dtype=torch.float64)
    torch.testing.assert_close(path.drift(z, t), f[:, None] * z)


@pytest.mark.parametrize("path", PATHS[:3], ids=IDS[:3])
def test_monte_carlo_forward_sde_matches_the_marginals(path):
    """Euler-Maruyama simulation of the forward SDE from a point x: mean alpha x, std sigma."""
    g = torch.Generator().manual_seed(0)
    n, steps = 20000, 1000
    x = torch.tensor([1.5, -0.5], dtype=torch.float64)
    z = x.expand(n, 2).clone()
    if isinstance(path, VEPath):  # the VE marginals count the data as already perturbed by sigma_min
        z = z + path.sigma_min * torch.randn(n, 2, generator=g, dtype=torch.float64)
    dt = 1.0 / steps
    checks = {250, 500, 1000}
    for i in range(steps):
        t = torch.tensor(i * dt, dtype=torch.float64)
        noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
        z = z + path.drift(z, t) * dt + path.diffusion(t) * math.sqrt(dt) * noise
        if i + 1 in checks:
            t_end = torch.tensor((i + 1) * dt, dtype=torch.float64)
            mean, std = path.marginal(x[None], t_end)
            # 4 Monte-Carlo standard errors plus the O(dt) bias of Euler-Maruyama (< 0.5% at 1000 steps).
            se = float(std) / math.sqrt(n)
            torch.testing.assert_close(z.mean(0), mean[0], atol=4 * se + 5e-3, rtol=0)
            torch.testing.assert_close(z.std(0), std.expand(2), rtol=4 / math.sqrt(2 * n) + 5e-3, atol=0)


@pytest.mark.parametrize("path", PATHS[:3], ids=IDS[:3])
def test_perturb_and_prior_log_density(path):
    x, e, t = torch.randn(4, 3, 2), torch.randn(4, 3, 2), torch.rand(4)
    z = path.perturb(x, e, t)
    torch.testing.assert_close(z, path.alpha(t)[:, None, None] * x + path.sigma(t)[:, None, None] * e)
    mean, std = path.marginal(x, t)
    torch.testing.assert_close(mean + std[:, None, None] * e, z)
    ref = torch.distributions.Normal(0.0, path.prior_std).log_prob(z).sum((1, 2))
    torch.testing.assert_close(path.prior_logp(z), ref)


def test_linear_path_is_the_projects_interpolation():
    x, e, t = torch.randn(5, 2), torch.randn(5, 2), torch.rand(5)
    z, v = LinearPath().sample(x, e, t)
    z_ref, v_ref = interpolate(x, e, t)
    assert torch.equal(z, z_ref) and torch.equal(v, v_ref)
    p = LinearPath()
    torch.testing.assert_close(z, p.alpha(t)[:, None] * x + p.sigma(t)[:, None] * e)


def test_discretisations_follow_the_reference_chains():
    n = 40
    i = torch.arange(n, dtype=torch.float64)
    t = i / (n - 1)
    z = torch.randn(n, 3, dtype=torch.float64)
    # VP: DDPM betas linspace(b0 / n, b1 / n, n), f = (sqrt(1 - beta) - 1) z, G = sqrt(beta).
    betas = torch.linspace(0.1 / n, 20 / n, n, dtype=torch.float64)
    f, g = VPPath().discretize(z, t, n)
    torch.testing.assert_close(g, torch.sqrt(betas))
    torch.testing.assert_close(f, (torch.sqrt(1 - betas)[:, None] - 1) * z)
    torch.testing.assert_close(VPPath().langevin_alpha(t, n), 1 - betas)
    # VE: geometric levels, G^2 = sigma_i^2 - sigma_{i-1}^2 (sigma_{-1} = 0), f = 0.
    sig = torch.exp(torch.linspace(math.log(0.01), math.log(50), n, dtype=torch.float64))
    f, g = VEPath().discretize(z, t, n)
    torch.testing.assert_close(g**2, sig**2 - torch.cat([torch.zeros(1, dtype=sig.dtype), sig[:-1]]) ** 2)
    assert torch.all(f == 0)
    # Sub-VP: Euler-Maruyama with dt = 1 / n.
    f, g = SubVPPath().discretize(z, t, n)
    torch.testing.assert_close(f, SubVPPath().drift(z, t) / n)
    torch.testing.assert_close(g, SubVPPath().diffusion(t) / math.sqrt(n))
    # A time just below a grid point still reads that level; times between points read the one below.
    below = t - 1e-7
    torch.testing.assert_close(VPPath().discretize(z[1:], below[1:], n)[1], torch.sqrt(betas[1:]))
    mid = (i[:-1] + 0.5) / (n - 1)
    torch.testing.assert_close(VPPath().discretize(z[:-1], mid, n)[1], torch.sqrt(betas[:-1]))
    with pytest.raises(UserError, match="beta_max"):  # beta_i would reach 1: sqrt(1 - beta_i) undefined
        VPPath().discretize(z, t, 20)


@pytest.mark.parametrize("cls, args", [(VPPath, (-0.1, 20)), (VPPath, (5.0, 1.0)), (SubVPPath, (0, 0)),
                                       (VEPath, (0.0, 50)), (VEPath, (10.0, 1.0))])
def test_bad_coefficients_raise(cls, args):
    with pytest.raises(UserError) as err:
        cls(*args)
    assert "\n" not in str(err.value)
