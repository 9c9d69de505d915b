"""`data.augment`: EDM's 9-label pipe and the official MeanFlow pipe (no y-flip, no rotation, 6 labels)."""

import pytest
import torch

from meanflow.data.augment import AugmentPipe
from meanflow.errors import UserError
from meanflow.training.augment_pipes import AUGMENT_LABEL_DIMS, MEANFLOW_COLUMNS, build_augment_pipe
from meanflow.training.presets import resolve_config


def test_meanflow_pipe_is_edm_without_yflip_and_rotation():
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    imgs, labels = build_augment_pipe("meanflow", 1.0)(x, torch.Generator().manual_seed(3))
    ref_imgs, ref = AugmentPipe(p=1.0, yflip=0.0, rotate_frac=0.0)(x, torch.Generator().manual_seed(3))
    assert labels.shape == (64, 6) and AUGMENT_LABEL_DIMS["meanflow"] == 6
    torch.testing.assert_close(labels, ref[:, list(MEANFLOW_COLUMNS)])
    torch.testing.assert_close(imgs, ref_imgs)
    assert ref[:, 1].abs().sum() == 0 and ref[:, 3:5].abs().sum() == 0  # no y-flip, no rotation
    assert labels[:, 0].sum() > 0  # x-flips happen


def test_edm_pipe_keeps_nine_labels():
    _, labels = build_augment_pipe("edm", 0.5)(torch.zeros(4, 3, 8, 8), torch.Generator().manual_seed(0))
    assert labels.shape == (4, 9)


def test_unknown_pipe_is_a_config_error():
    with pytest.raises(UserError, match="data.augment"):
        resolve_config("cifar10", overrides=["data.augment=ada"])
