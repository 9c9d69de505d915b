"""Fréchet distance, statistics, KID and Inception Score against direct computations."""

import numpy as np
import pytest
import scipy.special

from meanflow.errors import UserError
from meanflow.evaluation.fid import (
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    mmd2_unbiased,
    polynomial_kernel,
)


def test_frechet_distance_diagonal_closed_form():
    # For diagonal covariances: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_general_covariances_against_eigen_route():
    # tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)): an independent, symmetric computation.
    rng = np.random.default_rng(1)
    d = 12
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)

    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r = psd_sqrt(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(psd_sqrt(r @ s2 @ r))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("rank_deficient", [False, True])
def test_sqrtm_and_eigh_routes_agree(rank_deficient):
    rng = np.random.default_rng(7)
    n = 30 if rank_deficient else 400
    f1, f2 = rng.normal(size=(n, 48)) * rng.uniform(0.2, 2, 48), rng.normal(size=(n, 48)) + 0.2
    a, b = feature_statistics(f1), feature_statistics(f2)
    d_sqrtm = frechet_distance(*a, *b, method="sqrtm")
    assert frechet_distance(*a, *b, method="eigh") == pytest.approx(d_sqrtm, rel=1e-6, abs=1e-6)
    assert abs(frechet_distance(*a, *a, method="eigh")) < 1e-6 * np.trace(a[1])
    with pytest.raises(UserError, match="unknown"):
        frechet_distance(*a, *b, method="svd")


def test_fid_of_a_set_against_itself_is_zero_even_when_rank_deficient():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(20, 64)) * rng.uniform(0.5, 2, 64)  # n < d: singular covariance
    mu, sigma = feature_statistics(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)  # round-off only
    other = feature_statistics(rng.normal(size=(20, 64)) + 1.0)
    assert frechet_distance(mu, sigma, *other) > 10


def test_statistics_are_float64_and_unbiased():
    feats = np.random.default_rng(3).normal(size=(50, 4)).astype(np.float32)
    mu, sigma = feature_statistics(feats)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    f = feats.astype(np.float64)
    np.testing.assert_allclose(sigma, (f - f.mean(0)).T @ (f - f.mean(0)) / 49, rtol=1e-12)


def test_statistics_and_distance_refuse_bad_input():
    with pytest.raises(UserError, match="at least 2"):
        feature_statistics(np.zeros((1, 8)))
    with pytest.raises(UserError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def _direct_mmd2_unbiased(x, y):
    # O(n^2) double loops straight from the definition of the unbiased estimator.
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2 * sxy


def test_kid_matches_the_direct_formula():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(7, 5)) + 0.3
    # One subset of the full size is the whole set, so KID is exactly the unbiased MMD^2.
    kid, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=7)
    assert kid == pytest.approx(_direct_mmd2_unbiased(x, y), rel=1e-12)
    assert std == 0.0


def test_kid_is_unbiased_for_identical_distributions():
    rng = np.random.default_rng(5)
    n, d, draws = 8, 4, 3000
    unbiased, biased = [], []
    for _ in range(draws):
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
        unbiased.append(mmd2_unbiased(kxx, kyy, kxy))
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())  # includes the diagonal: biased upward
    unbiased, biased = np.array(unbiased), np.array(biased)
    se = unbiased.std() / np.sqrt(draws)
    assert abs(unbiased.mean()) < 4 * se
    assert biased.mean() > 10 * se  # the test would notice an estimator that kept the diagonal


def test_kid_refuses_mismatched_or_tiny_inputs():
    with pytest.raises(UserError, match="same dimension"):
        kernel_inception_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(UserError, match="at least 2"):
        kernel_inception_distance(np.zeros((1, 3)), np.zeros((5, 3)))


def test_inception_score_of_confident_uniform_predictions_is_the_class_count():
    k, n = 10, 200
    logits = np.full((n, k), -50.0)
    logits[np.arange(n), np.arange(n) % k] = 50.0
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
    # Against a direct KL computation on random logits (one split).
    logits = np.random.default_rng(6).normal(size=(30, 5)) * 3
    p = scipy.special.softmax(logits, axis=1)
    py = p.mean(0)
    expected = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), axis=1)))
    assert inception_score(logits, splits=1)[0] == pytest.approx(expected, rel=1e-10)


def test_inception_score_refuses_nan_logits():
    with pytest.raises(UserError, match="not finite"):
        inception_score(np.full((20, 1008), np.nan))
