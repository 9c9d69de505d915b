"""ODE solvers (Euler, Heun, RK45) and SDE steps (Euler-Maruyama, reverse diffusion, Langevin)."""

import math

import pytest
import torch
from method_testnets import SpyNet, TinyNet

from meanflow.errors import UserError
from meanflow.methods import FlowMatching
from meanflow.methods.solvers import euler_maruyama_step, langevin_step, reverse_diffusion_step, solve_ode

# dz/dt = A z with a rotation-plus-decay matrix: z(t) = expm(A (t - t0)) z(t0).
A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)


def _linear_field(calls=None):
    def fn(z, t):
        assert t.ndim == 0 and t.dtype == z.dtype
        if calls is not None:
            calls.append(float(t))
        return z @ A.to(z.dtype).T

    return fn


@pytest.mark.parametrize("span", [(0.0, 1.5), (1.0, 0.0)])
def test_rk45_solves_a_linear_ode_and_counts_evaluations(span):
    z0 = torch.randn(4, 2, dtype=torch.float64)
    calls = []
    z1, nfe = solve_ode(_linear_field(calls), z0, torch.tensor(span), rtol=1e-8, atol=1e-8)
    exact = z0 @ torch.linalg.matrix_exp(A * (span[1] - span[0])).T
    torch.testing.assert_close(z1, exact, rtol=1e-6, atol=1e-6)
    assert nfe == len(calls) > 6
    assert min(calls) >= min(span) and max(calls) <= max(span)
    # default tolerances 1e-5; only the ends of a longer grid are used
    z1, _ = solve_ode(_linear_field(), z0, torch.linspace(*span, 7))
    torch.testing.assert_close(z1, exact, rtol=1e-4, atol=1e-4)


def test_rk45_keeps_dtype_and_shape():
    z0 = torch.randn(3, 2, 2)
    z1, _ = solve_ode(lambda z, t: -z, z0, torch.tensor([0.0, 1.0]))
    assert z1.dtype == torch.float32 and z1.shape == z0.shape
    torch.testing.assert_close(z1, z0 * math.exp(-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 4])
def test_euler_and_heun_steps_on_a_linear_ode(steps):
    z0 = torch.randn(5, 2, dtype=torch.float64)
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    h = -1.0 / steps
    step_euler = torch.eye(2, dtype=torch.float64) + h * A
    step_heun = step_euler + (h * A) @ (h * A) / 2
    calls = []
    z, nfe = solve_ode(_linear_field(calls), z0, grid, method="euler")
    torch.testing.assert_close(z, z0 @ torch.linalg.matrix_power(step_euler, steps).T)
    assert nfe == len(calls) == steps and calls == pytest.approx(grid[:-1].tolist())
    calls = []
    z, nfe = solve_ode(_linear_field(calls), z0, grid, method="heun")
    torch.testing.assert_close(z, z0 @ torch.linalg.matrix_power(step_heun, steps).T)
    assert nfe == len(calls) == 2 * steps


@pytest.mark.parametrize("kwargs", [dict(method="rk4"), dict(method="rk45", rtol=0.0)])
def test_bad_solver_options_raise(kwargs):
    with pytest.raises(UserError):
        solve_ode(lambda z, t: z, torch.zeros(1, 1), torch.tensor([0.0, 1.0]), **kwargs)


@pytest.mark.parametrize("grid", [torch.tensor([1.0]), torch.zeros(2, 2)])
def test_bad_grids_raise(grid):
    with pytest.raises(UserError, match="1-D"):
        solve_ode(lambda z, t: z, torch.zeros(1, 1), grid, method="euler")


def _old_flow_matching_sample(fm, net, noise, steps, schedule=None):
    """Flow matching's sampler before it moved onto `solve_ode` (kept to check bit-identity)."""
    from meanflow.methods.base import resolve_schedule

    grid = resolve_schedule(steps, schedule, noise.device).to(noise.dtype)
    z = noise
    for i in range(grid.numel() - 1):
        t_cur, t_next = grid[i], grid[i + 1]
        dt = t_cur - t_next
        v = fm.velocity(net, z, t_cur)
        if fm.solver == "euler":
            z = z - dt * v
        else:
            z = z - dt * 0.5 * (v + fm.velocity(net, z - dt * v, t_next))
    return z


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("schedule", [None, torch.tensor([1.0, 0.7, 0.2, 0.0])])
def test_flow_matching_on_solve_ode_is_bit_identical(solver, schedule):
    net = TinyNet(shape=(3,), hidden=16)
    e = torch.randn(6, 3)
    fm = FlowMatching(solver=solver)
    steps = 1 if schedule is not None else 5
    assert torch.equal(fm.sample(net, e, steps=steps, schedule=schedule),
                       _old_flow_matching_sample(fm, net, e, steps, schedule))


def test_flow_matching_rk45_ignores_steps():
    """v(z) = a z integrated from t = 1 to 0: z(0) = e exp(-a)."""
    e = torch.randn(4, 3)
    net = SpyNet(scale=0.8)
    z = FlowMatching(solver="rk45").sample(net, e, steps=7)
    torch.testing.assert_close(z, e * math.exp(-0.8), rtol=1e-4, atol=1e-4)
    assert all(float(t[0]) <= 1.0 and float(t[0]) >= 0.0 for t, _, _ in net.calls)
    assert len(net.calls) != 7


def test_sde_steps_follow_their_formulas():
    z, drift, score = torch.randn(3, 2, 2), torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    g = torch.tensor([0.5, 1.0, 2.0])
    n = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(7))

    z_next, z_mean = euler_maruyama_step(z, drift, g, -0.01, torch.Generator().manual_seed(7))
    torch.testing.assert_close(z_mean, z - 0.01 * drift)
    torch.testing.assert_close(z_next, z_mean + g[:, None, None] * 0.1 * n)

    f = torch.randn(3, 2, 2)
    z_next, z_mean = reverse_diffusion_step(z, f, g, score, torch.Generator().manual_seed(7))
    torch.testing.assert_close(z_mean, z - f + g[:, None, None] ** 2 * score)
    torch.testing.assert_close(z_next, z_mean + g[:, None, None] * n)

    # step = 2 alpha (snr <||n||> / <||score||>)^2 with batch means of the per-sample norms
    alpha = torch.tensor(0.9)
    z_next, z_mean = langevin_step(z, score, 0.16, alpha, torch.Generator().manual_seed(7))
    step = 2 * alpha * (0.16 * n.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean()) ** 2
    torch.testing.assert_close(z_mean, z + step * score)
    torch.testing.assert_close(z_next, z_mean + torch.sqrt(2 * step) * n)


def test_sde_steps_draw_from_the_generator():
    z = torch.zeros(4, 3)
    a = euler_maruyama_step(z, z, 1.0, 0.1, torch.Generator().manual_seed(1))[0]
    b = euler_maruyama_step(z, z, 1.0, 0.1, torch.Generator().manual_seed(1))[0]
    c = euler_maruyama_step(z, z, 1.0, 0.1, torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
