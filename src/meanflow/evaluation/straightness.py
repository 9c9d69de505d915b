"""Straightness of a flow's ODE paths (Liu, Gong, Liu 2022, "Flow Straight and Fast", eq. for S(Z)).

For the trajectory ``z_t`` of ``dz/dt = v(z_t, t)`` started at noise ``z_1 = e``:

    S = integral_0^1 E || (z_1 - z_0) - v(z_t, t) ||^2 dt

``z_1 - z_0 = integral_0^1 v dt`` is the mean velocity of the path, so S is the (time-averaged)
variance of the velocity along it: 0 exactly when every path is a straight line run at constant
speed, which one Euler step then integrates exactly. Reflow lowers S (a 2-rectified flow is
straighter than the 1-rectified flow it was trained from).

Here the paths are the model's own Euler trajectories on the uniform grid of ``steps`` steps
(``t_i = 1 - i / steps``), and the integral is the matching Riemann sum: with ``d = z_1 - z_0 =
mean_i v_i``, ``S = mean_i ||d - v_i||^2 = mean_i ||v_i||^2 - ||d||^2`` per sample (summed over the
sample's dims), accumulated in float64 without keeping the trajectory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from meanflow.methods.time_sampling import uniform_schedule


@torch.no_grad()
def straightness(fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int = 100,
                 reduce: bool = True) -> Tensor:
    """S along the Euler trajectories of ``dz/dt = fn(z, t)`` from ``z_1 = noise`` (t = 1) to t = 0.

    Args:
        fn: Velocity ``fn(z [B, *S], t 0-dim) -> [B, *S]`` (e.g.
            :func:`meanflow.methods.rectified_flow.velocity_field`).
        noise: Starting points ``[B, *S]``.
        steps: Euler steps (and velocity evaluations) per path.
        reduce: Return the mean over the batch (0-dim) instead of one value per path ``[B]``.

    Returns:
        float64 ``S`` (0-dim), or ``[B]`` with ``reduce=False``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = uniform_schedule(steps, device=noise.device)
    z = noise
    sq = torch.zeros(noise.shape[0], dtype=torch.float64, device=noise.device)
    mean_v = torch.zeros_like(noise, dtype=torch.float64)
    for i in range(steps):
        v = fn(z, grid[i].to(noise.dtype))
        v64 = v.to(torch.float64)
        sq += v64.square().flatten(1).sum(dim=1) / steps
        mean_v += v64 / steps
        z = z - (grid[i] - grid[i + 1]).to(noise.dtype) * v
    s = (sq - mean_v.square().flatten(1).sum(dim=1)).clamp_min(0.0)
    return s.mean() if reduce else s


def model_straightness(net: nn.Module, noise: Tensor, y: Tensor | None = None, steps: int = 100,
                       net_kwargs: dict | None = None) -> Tensor:
    """:func:`straightness` of a velocity network at ``h = 0`` (flow matching, reflow, MeanFlow):
    ``fn(z, t) = net(z, t, 0, y)``; returns the batch mean (0-dim, float64)."""
    from meanflow.methods.rectified_flow import velocity_field

    return straightness(velocity_field(net, y, net_kwargs), noise, steps)
