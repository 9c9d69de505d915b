"""The k-step diagnosis: the reference flow and the sampler coverage against known answers."""

import pytest
import torch

from benchmarks.suite import diagnose


def test_reference_flow_of_a_point_mass_is_straight():
    # Data = one point x0: z_t = (1 - t) x0 + t e moves on a straight line, u*(z, r, t) = (z - x0) / t.
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64).repeat(4, 1)
    z = torch.randn(6, 2, dtype=torch.float64)
    for r, t in ((0.0, 1.0), (0.5, 1.0), (0.25, 0.5)):
        zr = diagnose.reference_flow(z, t, r, x0)
        torch.testing.assert_close((z - zr) / (t - r), (z - x0[:1]) / t, rtol=1e-4, atol=1e-4)


def test_posterior_mean_picks_the_nearest_point_at_small_t():
    ref = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([[2.9, 0.1], [0.2, -0.1]], dtype=torch.float64)
    torch.testing.assert_close(diagnose.posterior_mean(z, 1e-2, ref), ref.flip(0))


def test_coverage_of_the_uniform_sorted_sampler():
    # t, r ~ U(0, 1) sorted, every pair r != t: density 2 on r < t. The box |r - 0.5| <= 0.05, |t - 1| <= 0.05
    # holds 0.1 x 0.05 of it: probability 0.01; the box around (0.25, 0.5) lies inside r < t: 0.02.
    got = {
        p["metric"]: p["value"] for p in diagnose.coverage({"ratio": 1.0, "time_dist": "uniform"}, 400_000)
    }
    assert got["coverage[0.5,1]"] == pytest.approx(0.01, rel=0.1)
    assert got["coverage[0.25,0.5]"] == pytest.approx(0.02, rel=0.1)
    assert got["coverage[0,1]"] == pytest.approx(2 * 0.05 * 0.05, rel=0.15)
