"""The 2-D toy distributions as point datasets (sampled by :mod:`meanflow.data.toy2d`)."""

from __future__ import annotations

from meanflow.data.types import PointData
from meanflow.errors import UserError

# Mirrors meanflow.data.toy2d.NAMES (the design contract); listed here so the registry can name
# them without importing the sampler module.
TOY2D_NAMES = ("checkerboard", "8gaussians", "moons", "spirals")
TEST_SEED_OFFSET = 1_000_003  # split "test" draws with seed + offset: disjoint from the train draw


def load_toy2d(name: str, split: str = "train", *, n: int = 100_000, seed: int = 0) -> PointData:
    """Draw ``n`` points of a 2-D toy distribution.

    Args:
        name: one of :data:`TOY2D_NAMES`.
        split: ``"train"`` draws with ``seed``; ``"test"`` with ``seed + TEST_SEED_OFFSET``.
        n: number of points.
        seed: base seed; the same (name, split, n, seed) always gives the same points.

    Returns:
        PointData with x float32 [n, 2] and no labels.
    """
    if n < 1:
        raise UserError(f"{name}: n must be a positive number of points, got {n}")
    from meanflow.limits import check_fits

    # float32 [n, 2], the sampler's temporaries and the data order (int64 [n]): ~48 bytes a point
    check_fits(48 * n, f"{n} points of {name}", "lower data.num_points (or -n)")
    from meanflow.data import toy2d  # imported late: it is a separate module with its own owner

    seed = seed + (TEST_SEED_OFFSET if split == "test" else 0)
    x = toy2d.sample(name, n, seed).float()
    return PointData(x=x, y=None, num_classes=0, name=name)
