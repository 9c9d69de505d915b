"""Means and intervals over seeds.

The interval of a row is the two-sided 95% Student-t confidence interval of the mean over its seeds:
``mean +- t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation (``ddof = 1``). It
treats seeds as independent draws of the whole training run (weights, data order, time draws,
sampling noise); with 3 seeds ``t_{0.975, 2} = 4.303``, so the half-width is 2.48 standard deviations.
One seed has no interval (``nan``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Mean, 95% half-width and sample size of one row."""

    mean: float
    half: float
    n: int
    values: tuple[float, ...]

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def text(self, digits: int = 3) -> str:
        """``"0.123 +- 0.004"`` (``"0.123"`` for one seed)."""
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f}"


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile ``t_{(1 + level) / 2, df}``."""
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, df))


def summarize(values: Iterable[float], level: float = 0.95) -> Summary:
    """Mean and the Student-t half-width ``t_{(1+level)/2, n-1} * s / sqrt(n)`` of `values`."""
    vals = tuple(float(v) for v in values)
    n = len(vals)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = sum(vals) / n
    if n < 2:
        return Summary(mean, math.nan, n, vals)
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return Summary(mean, t_quantile(n - 1, level) * math.sqrt(var / n), n, vals)


def disjoint(a: Summary, b: Summary) -> bool:
    """Whether two rows' 95% intervals do not overlap (a conservative 'the difference is real')."""
    return a.n > 1 and b.n > 1 and (a.high < b.low or b.high < a.low)


GROUP = ("setup", "dataset", "method", "variant", "run_steps", "train_steps", "nfe", "metric")


def group(recs: Iterable[dict], by: tuple[str, ...] = GROUP) -> dict[tuple, Summary]:
    """Records grouped by `by` (every key field but the seed), each group summarized over its seeds."""
    vals: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in recs:
        vals[tuple(r.get(k) for k in by)][r["seed"]] = float(r["value"])
    return {k: summarize(v[s] for s in sorted(v)) for k, v in vals.items()}
