"""ODE solvers and SDE steps shared by the samplers (flow matching, Score SDE, ...).

ODEs go through one entry point, :func:`solve_ode`, with fixed-grid Euler / Heun or adaptive RK45
(``scipy.integrate.solve_ivp``). A vector field is a callable ``fn(z, t) -> dz/dt`` with ``z``
``[B, *S]`` and ``t`` a 0-dim tensor; time may run either way (samplers go from t = 1 down).

SDE steps take values the caller has computed (drift, score, ...) and draw their fresh noise with
:func:`meanflow.methods.base.fresh_noise` from ``generator``. Each returns ``(z_next, z_mean)``:
the new state and the same step without its noise (the Score SDE samplers return ``z_mean`` of the
last step when denoising).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from meanflow.errors import UserError
from meanflow.methods.base import NoiseSource, expand_like, fresh_noise

ODE_METHODS = ("rk45", "euler", "heun")

VectorField = Callable[[Tensor, Tensor], Tensor]
"""``fn(z [B, *S], t 0-dim) -> dz/dt [B, *S]``."""


def solve_ode(
    fn: VectorField,
    z: Tensor,
    grid_or_span: Tensor,
    *,
    method: str = "rk45",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[Tensor, int]:
    """Integrate ``dz/dt = fn(z, t)`` from the first time of ``grid_or_span`` to its last.

    * ``"euler"``: ``z <- z + (t_{i+1} - t_i) fn(z, t_i)`` on the grid (1 evaluation per step).
    * ``"heun"``: ``z' = z + h fn(z, t_i)``, ``z <- z + h (fn(z, t_i) + fn(z', t_{i+1})) / 2`` with
      ``h = t_{i+1} - t_i`` (2 evaluations per step, second order).
    * ``"rk45"``: adaptive Dormand-Prince (``scipy.integrate.solve_ivp``) from ``t_0`` to ``t_k`` with
      tolerances ``rtol`` / ``atol``; only the first and last times are used. The state is
      flattened and held in float64 by scipy; ``fn`` still sees ``z``'s dtype and device. The whole
      batch shares one step-size sequence, so a sample moves (within the tolerance) with its batch.

    Args:
        fn: Vector field ``fn(z [B, *S], t 0-dim tensor) -> [B, *S]``.
        z: Initial state ``[B, *S]`` at ``t_0``.
        grid_or_span: 1-D tensor of times ``t_0, ..., t_k`` (k >= 1), increasing or decreasing.
        method: ``"rk45"``, ``"euler"`` or ``"heun"``.
        rtol: Relative tolerance (rk45 only).
        atol: Absolute tolerance (rk45 only).

    Returns:
        ``(z at t_k [B, *S] in z's dtype, number of evaluations of fn)``.

    Raises:
        UserError: Unknown method, or times that are not a 1-D tensor of at least two entries.
    """
    if method not in ODE_METHODS:
        raise UserError(f"unknown ODE solver {method!r}; choose from {', '.join(ODE_METHODS)}")
    grid = torch.as_tensor(grid_or_span)
    if grid.ndim != 1 or grid.numel() < 2:
        raise UserError(f"ODE times must be a 1-D tensor of length >= 2, got shape {tuple(grid.shape)}")
    if method == "rk45":
        if not (rtol > 0 and atol > 0):
            raise UserError(f"rtol and atol must be > 0, got {rtol}, {atol}")
        return _rk45(fn, z, float(grid[0]), float(grid[-1]), rtol, atol)
    return (_euler if method == "euler" else _heun)(fn, z, grid)


def _euler(fn: VectorField, z: Tensor, grid: Tensor) -> tuple[Tensor, int]:
    for i in range(grid.numel() - 1):
        z = z + (grid[i + 1] - grid[i]) * fn(z, grid[i])
    return z, grid.numel() - 1


def _heun(fn: VectorField, z: Tensor, grid: Tensor) -> tuple[Tensor, int]:
    for i in range(grid.numel() - 1):
        h = grid[i + 1] - grid[i]
        v = fn(z, grid[i])
        z = z + h * 0.5 * (v + fn(z + h * v, grid[i + 1]))
    return z, 2 * (grid.numel() - 1)


def _rk45(fn: VectorField, z: Tensor, t0: float, t1: float, rtol: float, atol: float) -> tuple[Tensor, int]:
    shape, dtype, device = z.shape, z.dtype, z.device

    def rhs(t: float, flat: np.ndarray) -> np.ndarray:
        state = torch.from_numpy(flat).reshape(shape).to(device=device, dtype=dtype)
        out = fn(state, torch.tensor(t, dtype=dtype, device=device))
        return out.detach().to("cpu", torch.float64).reshape(-1).numpy()

    start = z.detach().to("cpu", torch.float64).reshape(-1).numpy()
    sol = solve_ivp(rhs, (t0, t1), start, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"RK45 failed between t = {t0} and t = {t1}: {sol.message}")
    out = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape).to(device=device, dtype=dtype)
    return out, int(sol.nfev)


def _per_sample(c: Tensor | float, z: Tensor) -> Tensor | float:
    """A coefficient (float, 0-dim or ``[B]``) made to broadcast against ``z`` ``[B, *S]``."""
    return expand_like(c, z) if isinstance(c, Tensor) and c.ndim == 1 else c


def euler_maruyama_step(
    z: Tensor, drift: Tensor, diffusion: Tensor | float, dt: float, generator: NoiseSource = None
) -> tuple[Tensor, Tensor]:
    """One Euler-Maruyama step of ``dz = a dt + b dw`` by a signed time step ``dt``.

    ``z_mean = z + a dt``, ``z_next = z_mean + b sqrt(|dt|) n`` with ``n ~ N(0, I)`` (a reverse-time
    SDE is stepped with ``dt < 0`` and its reverse drift ``a = f - g^2 score``).

    Args:
        z: State ``[B, *S]``.
        drift: ``a(z, t)`` ``[B, *S]``.
        diffusion: ``b(t)``: float, 0-dim or ``[B]``.
        dt: Signed step.
        generator: Source of ``n`` (see :func:`fresh_noise`).

    Returns:
        ``(z_next, z_mean)``, both ``[B, *S]``.
    """
    z_mean = z + drift * dt
    return z_mean + _per_sample(diffusion, z) * math.sqrt(abs(dt)) * fresh_noise(z, generator), z_mean


def reverse_diffusion_step(
    z: Tensor, f: Tensor, g: Tensor | float, score: Tensor, generator: NoiseSource = None
) -> tuple[Tensor, Tensor]:
    """Run the forward chain ``z_{i+1} = z_i + f_i + G_i n`` backwards one step (the reference's
    reverse-diffusion predictor).

    ``z_mean = z - f_i + G_i^2 score``, ``z_next = z_mean + G_i n`` with ``n ~ N(0, I)``.

    Args:
        z: State ``[B, *S]``.
        f: ``f_i`` ``[B, *S]`` of :meth:`meanflow.methods.paths.SDEPath.discretize`.
        g: ``G_i``: float, 0-dim or ``[B]``.
        score: ``grad log p_t(z)`` ``[B, *S]``.
        generator: Source of ``n``.

    Returns:
        ``(z_next, z_mean)``, both ``[B, *S]``.
    """
    g = _per_sample(g, z)
    z_mean = z - f + g**2 * score
    return z_mean + g * fresh_noise(z, generator), z_mean


def langevin_step(
    z: Tensor, score: Tensor, snr: float, alpha: Tensor | float = 1.0, generator: NoiseSource = None
) -> tuple[Tensor, Tensor]:
    """One Langevin MCMC step whose size is set by a signal-to-noise ratio (the reference's corrector).

    ``s = 2 alpha (snr <||n||> / <||score||>)^2``, ``z_mean = z + s score``,
    ``z_next = z_mean + sqrt(2 s) n``, with ``n ~ N(0, I)`` and ``<.>`` the mean over the batch of
    the per-sample norms, as in the reference. The batch means couple the samples of a batch: a
    sample's step size (not its noise) depends on its batch-mates. A per-sample rule avoids that but
    is unstable for low-dimensional data, where ``||score||`` is often near 0 and the step explodes.

    Args:
        z: State ``[B, *S]``.
        score: ``grad log p_t(z)`` ``[B, *S]``.
        snr: Target signal-to-noise ratio (0.16 in the reference's VE configs).
        alpha: ``1 - beta_i`` for VP / sub-VP, 1 for VE (:meth:`SDEPath.langevin_alpha`); float,
            0-dim or ``[B]``.
        generator: Source of ``n``.

    Returns:
        ``(z_next, z_mean)``, both ``[B, *S]``.
    """
    noise = fresh_noise(z, generator)
    noise_norm = noise.flatten(1).norm(dim=1).mean()
    score_norm = score.flatten(1).norm(dim=1).mean().clamp_min(torch.finfo(z.dtype).tiny)
    step = _per_sample(2 * alpha * (snr * noise_norm / score_norm) ** 2, z)
    z_mean = z + step * score
    return z_mean + torch.sqrt(2 * step) * noise, z_mean
