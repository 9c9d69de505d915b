import pytest
import torch

from meanflow.errors import UserError
from meanflow.evaluation.toy_metrics import energy_distance, mmd_rbf, sliced_wasserstein


def test_sliced_wasserstein_known_values():
    torch.manual_seed(0)
    a = torch.randn(3000, 2)
    assert sliced_wasserstein(a, a) == 0.0
    # A shift by m: every projection shifts by w.m, so SW_2^2 = E_w (w.m)^2 = |m|^2 / D.
    m = torch.tensor([1.0, 2.0])
    assert sliced_wasserstein(a, a + m, n_proj=4000) == pytest.approx((5 / 2) ** 0.5, rel=0.03)
    # Unequal sizes work (quantile matching) and are near 0 for the same distribution.
    assert sliced_wasserstein(a, torch.randn(1000, 2)) < 0.08


def test_energy_distance_and_mmd():
    torch.manual_seed(0)
    a, b = torch.randn(1500, 2), torch.randn(1500, 2)
    same = energy_distance(a, b)
    shifted = energy_distance(a, b + 1.0)
    assert abs(same) < 0.01 and shifted > 0.5
    assert abs(mmd_rbf(a, b)) < 0.005 and mmd_rbf(a, b + 1.0) > 0.1


def test_distances_rank_closer_clouds_lower():
    torch.manual_seed(0)
    ref = torch.randn(2000, 2)
    near, far = torch.randn(2000, 2) * 1.1, torch.randn(2000, 2) * 2.0
    for f in (sliced_wasserstein, energy_distance, mmd_rbf):
        assert f(ref, near) < f(ref, far)


@pytest.mark.parametrize("a, b", [(torch.zeros(5, 2), torch.zeros(5, 3)), (torch.zeros(5), torch.zeros(5))])
def test_bad_shapes_raise(a, b):
    with pytest.raises(UserError):
        sliced_wasserstein(a, b)
    with pytest.raises(UserError):
        energy_distance(a, b)
