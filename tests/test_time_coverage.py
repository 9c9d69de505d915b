"""benchmarks/time_coverage.py: Monte Carlo interval fractions against closed forms."""

import pytest
from benchmark_scripts import load_benchmark

from meanflow.methods import MeanFlow


@pytest.fixture(scope="module")
def coverage_mod():
    return load_benchmark("time_coverage")


def test_uniform_sorted_pairs_match_closed_form(coverage_mod):
    # r, t = sorted pair of two U(0, 1): P(t - r > L) = (1 - L)^2; P(r < a, t > 1 - a) = 2 a^2.
    cov = coverage_mod.coverage(MeanFlow(ratio=1.0, time_dist="uniform"), 400_000, near=0.1)
    assert cov["r != t"] == pytest.approx(1.0)
    for length in coverage_mod.LENGTHS:
        assert cov[f"P(t-r>{length})"] == pytest.approx((1 - length) ** 2, abs=3e-3)
    assert cov["P(r<0.1,t>0.9)"] == pytest.approx(2 * 0.1**2, abs=2e-3)


def test_ratio_scales_the_fractions(coverage_mod):
    full = coverage_mod.coverage(MeanFlow(ratio=1.0, time_dist="uniform"), 400_000, near=0.05)
    quarter = coverage_mod.coverage(MeanFlow(ratio=0.25, time_dist="uniform"), 400_000, near=0.05)
    assert quarter["r != t"] == pytest.approx(0.25, abs=3e-3)
    assert quarter["P(t-r>0.5)"] == pytest.approx(0.25 * full["P(t-r>0.5)"], abs=2e-3)
    none = coverage_mod.coverage(MeanFlow(ratio=0.0), 10_000, near=0.05)
    assert all(v == 0 for v in none.values())


def test_cli_prints_a_row_per_preset(coverage_mod, capsys):
    coverage_mod.main(["mnist", "cifar10-v1", "--draws", "20000"])
    out = capsys.readouterr().out
    assert "| mnist | logit_normal t -0.4/1.0, sort | 0.25" in out
    assert "| cifar10-v1 |" in out and ", min |" in out
