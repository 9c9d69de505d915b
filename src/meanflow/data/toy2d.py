"""Seeded 2-D toy distributions for fast end-to-end checks, each of roughly unit scale.

``sample(name, n, seed) -> [n, 2]`` float32. Every draw uses its own ``torch.Generator``, so the
same ``(name, n, seed)`` always gives the same points, whatever the global RNG state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from meanflow.errors import UserError

NAMES = ("checkerboard", "8gaussians", "moons", "spirals")


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    # 4 x 4 board on [-2, 2]^2 (8 filled squares), scaled by sqrt(3)/2 to per-coordinate std 1.
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - 2 * torch.randint(0, 2, (n,), generator=g).float()
    x2 = x2 + torch.floor(x1).remainder(2)
    return torch.stack([x1, x2], dim=1) * (math.sqrt(3) / 2)


def _eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    # Radius 1.4, std 0.1: per-coordinate std sqrt(1.4^2 / 2 + 0.1^2) ~ 1.0.
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.float() * (2 * math.pi / 8)
    centers = 1.4 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centers + 0.1 * torch.randn(n, 2, generator=g)


def _moons(n: int, g: torch.Generator) -> Tensor:
    # Two interleaved half circles (as in scikit-learn), noise 0.05, centred and scaled to std ~ 1.
    upper = torch.rand(n, generator=g) < 0.5
    theta = torch.rand(n, generator=g) * math.pi
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x, y], dim=1) + 0.05 * torch.randn(n, 2, generator=g)
    return (pts - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5])


def _spirals(n: int, g: torch.Generator) -> Tensor:
    # Two interleaved Archimedean spirals of 1.5 turns, noise 0.03 after scaling to radius <= 1.8.
    arm = torch.rand(n, generator=g) < 0.5
    s = torch.sqrt(torch.rand(n, generator=g))  # uniform along the arc length roughly
    angle = s * 3 * math.pi + torch.where(arm, math.pi, 0.0)
    radius = 1.8 * s
    pts = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return pts + 0.03 * torch.randn(n, 2, generator=g)


_SAMPLERS = {
    "checkerboard": _checkerboard,
    "8gaussians": _eight_gaussians,
    "moons": _moons,
    "spirals": _spirals,
}


def sample(name: str, n: int, seed: int = 0) -> Tensor:
    """Draw ``n`` points from a named 2-D distribution.

    Args:
        name: One of :data:`NAMES`.
        n: Number of points (>= 1).
        seed: Seed of the private generator.

    Returns:
        Float32 tensor ``[n, 2]``, roughly zero-mean with per-coordinate std near 1.

    Raises:
        UserError: Unknown name or ``n < 1``.
    """
    if name not in _SAMPLERS:
        raise UserError(f"unknown 2-D distribution {name!r}; choose from {', '.join(NAMES)}")
    if int(n) != n or n < 1:
        raise UserError(f"n must be an integer >= 1, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    return _SAMPLERS[name](int(n), g).float()
