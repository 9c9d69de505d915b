"""scipy's "Matrix is singular" warning (few samples, collapsed features) stays inside the Fréchet distance:
the user sees the FID, not a library warning (issue 24)."""

import warnings

import numpy as np
import pytest

from meanflow.evaluation.fid import frechet_distance


def test_singular_covariances_give_a_finite_fid_without_warnings():
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(5, 32)), rng.normal(size=(5, 32))  # rank 4 covariances in 32 dimensions
    s1, s2 = np.cov(f1, rowvar=False), np.zeros((32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        d = frechet_distance(f1.mean(0), s1, f2.mean(0), s2)
    assert np.isfinite(d)
    assert d == pytest.approx(frechet_distance(f1.mean(0), s1, f2.mean(0), s2, method="eigh"), rel=1e-6)
