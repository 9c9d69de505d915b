"""Sample-based distances between point clouds ``[N, D]`` (2-D toys, small feature sets).

* :func:`sliced_wasserstein`: ``SW_2(a, b) = sqrt(E_w W_2^2(w.a, w.b))`` over random unit
  directions ``w``; each 1-D ``W_2`` compares sorted projections (quantiles when ``N_a != N_b``).
* :func:`energy_distance`: ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Székely), >= 0, zero iff the
  distributions are equal; within-sample terms exclude the diagonal (unbiased U-statistics).
* :func:`mmd_rbf`: squared maximum mean discrepancy with a Gaussian kernel (unbiased).

All return a Python float and are computed in float64 without gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meanflow.errors import UserError


def _check(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise UserError(f"expected [N, D] and [M, D] point sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise UserError("need at least 2 points in each set")
    return a.detach().double().cpu(), b.detach().double().cpu()


def _quantiles(p: Tensor, n: int) -> Tensor:
    """Sorted columns of ``p`` [N, K] resampled at ``n`` mid-point quantile levels -> [n, K]."""
    s = p.sort(dim=0).values
    if s.shape[0] == n:
        return s
    levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.quantile(s, levels, dim=0)


@torch.no_grad()
def sliced_wasserstein(a: Tensor, b: Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two point sets.

    Args:
        a: ``[N, D]``.
        b: ``[M, D]``.
        n_proj: Number of random directions.
        seed: Seed of the directions (fixed, so that repeated calls compare like with like).

    Returns:
        ``sqrt(mean_w mean_q (F_a^-1(q) - F_b^-1(q))^2)`` for projections on unit ``w``.
    """
    a, b = _check(a, b)
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(a.shape[1], int(n_proj), generator=g, dtype=torch.float64)
    w = w / w.norm(dim=0, keepdim=True)
    n = max(a.shape[0], b.shape[0])
    qa, qb = _quantiles(a @ w, n), _quantiles(b @ w, n)
    return float((qa - qb).square().mean().sqrt())


def _mean_offdiag(d: Tensor) -> Tensor:
    n = d.shape[0]
    return (d.sum() - d.diagonal().sum()) / (n * (n - 1))


@torch.no_grad()
def energy_distance(a: Tensor, b: Tensor) -> float:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` between two point sets ``[N, D]``, ``[M, D]``.

    Memory is O(N M); keep the sets at a few thousand points.
    """
    a, b = _check(a, b)
    xy = torch.cdist(a, b).mean()
    xx = _mean_offdiag(torch.cdist(a, a))
    yy = _mean_offdiag(torch.cdist(b, b))
    return float(2 * xy - xx - yy)


@torch.no_grad()
def mmd_rbf(a: Tensor, b: Tensor, bandwidth: float = 1.0) -> float:
    """Unbiased squared MMD with kernel ``exp(-|x - y|^2 / (2 bandwidth^2))`` on ``[N, D]``, ``[M, D]``."""
    if not bandwidth > 0:
        raise UserError(f"bandwidth must be > 0, got {bandwidth}")
    a, b = _check(a, b)

    def k(p: Tensor, q: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(p, q).square() / (2 * bandwidth**2))

    return float(_mean_offdiag(k(a, a)) + _mean_offdiag(k(b, b)) - 2 * k(a, b).mean())


def knn_radii(p: Tensor, k: int = 3) -> Tensor:
    """Distance of each row of ``p`` [N, D] to its k-th nearest other row -> [N] (float64)."""
    p = torch.as_tensor(p).detach().double().cpu()
    d = torch.cdist(p, p)
    # the smallest is the point itself (distance 0); topk of k + 1 is ~10x faster than kthvalue here
    return d.topk(k + 1, dim=1, largest=False).values[:, -1]


@torch.no_grad()
def knn_precision_recall(fake: Tensor, real: Tensor, k: int = 3,
                         real_radii: Tensor | None = None) -> tuple[float, float]:
    """k-NN precision and recall (Kynkaanniemi et al., 2019) of ``fake`` [N, D] against ``real`` [M, D].

    Each set's manifold is the union of balls around its points, each ball's radius the distance to
    that point's k-th nearest neighbour in the same set. Precision is the share of ``fake`` points
    inside the real manifold (sample quality), recall the share of ``real`` points inside the fake
    manifold (coverage). Memory is O(N M): keep the sets at a few thousand points.

    ``real_radii``: ``knn_radii(real, k)``, when many sample sets are compared with one real set.

    Returns:
        ``(precision, recall)``, each in [0, 1].
    """
    fake, real = _check(fake, real)
    if not 1 <= k < min(len(fake), len(real)):
        raise UserError(f"k must be in [1, {min(len(fake), len(real)) - 1}], got {k}")
    d = torch.cdist(fake, real)  # [N, M]
    radii = knn_radii(real, k) if real_radii is None else torch.as_tensor(real_radii).double()
    precision = (d <= radii[None, :]).any(dim=1).double().mean()
    recall = (d <= knn_radii(fake, k)[:, None]).any(dim=0).double().mean()
    return float(precision), float(recall)
