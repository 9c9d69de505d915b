"""Means and 95% Student-t intervals over seeds, against hand-computed cases."""

import math

import pytest

from benchmarks.suite.stats import disjoint, group, summarize, t_quantile


def test_interval_of_three_seeds_by_hand():
    # values 1, 2, 3: mean 2, sample sd 1, t_{0.975, 2} = 4.302653 (tables), half = 4.302653 / sqrt(3).
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.n == 3
    assert s.half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert s.low == pytest.approx(2.0 - 2.484138, abs=1e-6) and s.high == pytest.approx(
        2.0 + 2.484138, abs=1e-6
    )
    assert s.text(2) == "2.00 ± 2.48"


def test_interval_of_two_seeds_and_quantiles():
    # values 0.10, 0.14: mean 0.12, sd 0.028284, t_{0.975, 1} = 12.7062, half = 12.7062 * 0.02 = 0.254124.
    s = summarize([0.10, 0.14])
    assert s.half == pytest.approx(0.254124, rel=1e-5)
    assert t_quantile(9) == pytest.approx(2.262157, rel=1e-6)


def test_one_seed_has_no_interval():
    s = summarize([0.5])
    assert s.n == 1 and math.isnan(s.half) and s.text() == "0.500"
    with pytest.raises(ValueError):
        summarize([])


def test_disjoint_and_grouping_over_seeds():
    a, b = summarize([1.0, 1.1, 0.9]), summarize([2.0, 2.1, 1.9])
    assert disjoint(a, b) and not disjoint(a, summarize([1.2, 0.8, 1.0]))
    recs = [
        {
            "setup": "s",
            "dataset": "d",
            "method": "m",
            "variant": None,
            "run_steps": 10,
            "train_steps": 10,
            "nfe": 1,
            "metric": "sliced_w2",
            "seed": seed,
            "value": v,
        }
        for seed, v in enumerate([1.0, 2.0, 3.0])
    ]
    ((key, s),) = group(recs).items()
    assert key == ("s", "d", "m", None, 10, 10, 1, "sliced_w2") and s.values == (1.0, 2.0, 3.0)
