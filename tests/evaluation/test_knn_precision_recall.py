"""k-NN precision and recall (Kynkaanniemi et al., 2019) on point sets with known answers."""

import pytest
import torch

from meanflow.errors import UserError
from meanflow.evaluation.toy_metrics import knn_precision_recall


def test_identical_sets_score_one_and_far_sets_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 2, generator=g)
    assert knn_precision_recall(a, a.clone()) == (1.0, 1.0)
    assert knn_precision_recall(a + 100.0, a) == (0.0, 0.0)


def test_mode_collapse_is_high_precision_low_recall():
    g = torch.Generator().manual_seed(1)
    centers = torch.tensor([[-4.0, 0.0], [4.0, 0.0]])
    real = centers[torch.arange(1000) % 2] + 0.3 * torch.randn(1000, 2, generator=g)
    fake = centers[0] + 0.3 * torch.randn(1000, 2, generator=g)  # one of the two modes only
    p, r = knn_precision_recall(fake, real, k=3)
    assert p > 0.95 and 0.4 < r < 0.6


def test_bad_k_is_a_user_error():
    with pytest.raises(UserError, match="k must be"):
        knn_precision_recall(torch.zeros(3, 2), torch.zeros(3, 2), k=3)
