"""Time draws: r <= t, the exact fraction with r != t, distribution parameters, schedules."""

import math

import pytest
import torch

from meanflow.errors import UserError
from meanflow.methods.time_sampling import sample_t_r, sample_time, uniform_schedule


@pytest.mark.parametrize("pairing", ["sort", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.75, 1.0])
def test_r_le_t_and_fraction(pairing, ratio):
    n = 4000
    t, r = sample_t_r(n, ratio=ratio, pairing=pairing, t_mean=-0.6, t_std=1.6, r_mean=-4.0, r_std=1.6)
    assert t.shape == r.shape == (n,)
    assert torch.all(r <= t) and torch.all((t > 0) & (t < 1)) and torch.all(r > 0)
    frac = float((r != t).float().mean())
    if pairing == "sort":
        assert frac == pytest.approx(ratio, abs=1e-3)  # exact count
    else:
        # "min": r = min(t, r) can equal t even inside the mask (when the r draw exceeds t).
        assert frac <= ratio + 1e-3
        if ratio > 0:
            assert frac > 0.8 * ratio  # r ~ LN(-4, 1.6) is almost always below t


def test_logit_normal_and_uniform_statistics():
    g = torch.Generator().manual_seed(1)
    t = sample_time(20000, "logit_normal", -0.4, 1.0, generator=g)
    logit = torch.log(t / (1 - t))
    assert float(logit.mean()) == pytest.approx(-0.4, abs=0.03)
    assert float(logit.std()) == pytest.approx(1.0, abs=0.03)
    u = sample_time(20000, "uniform", generator=g)
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01) and 0 <= float(u.min()) and float(u.max()) < 1


def test_sort_pairing_marginals():
    """Sorted i.i.d. pair: t is the max of two draws, so P(t <= m) = P(draw <= m)^2 at the median m."""
    t, r = sample_t_r(20000, ratio=1.0, pairing="sort", t_mean=0.0, t_std=1.0)
    assert float((t <= 0.5).float().mean()) == pytest.approx(0.25, abs=0.015)
    assert float((r <= 0.5).float().mean()) == pytest.approx(0.75, abs=0.015)


def test_seeded_draws_repeat():
    a = sample_t_r(10, generator=torch.Generator().manual_seed(3))
    b = sample_t_r(10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_uniform_schedule():
    s = uniform_schedule(4)
    assert s.dtype == torch.float64
    assert s.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


@pytest.mark.parametrize(
    "call",
    [
        lambda: sample_t_r(4, ratio=-0.1),
        lambda: sample_t_r(4, ratio=1.01),
        lambda: sample_t_r(4, pairing="avg"),
        lambda: sample_time(4, "cosine"),
        lambda: sample_time(4, "logit_normal", 0.0, 0.0),
        lambda: uniform_schedule(0),
        lambda: uniform_schedule(math.pi),
    ],
)
def test_invalid_arguments_raise(call):
    with pytest.raises(UserError):
        call()
