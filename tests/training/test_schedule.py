"""The learning-rate schedule (warmup, EDM2's inverse square-root decay) and the optimizer choice."""

import math

import pytest
import torch

from meanflow.errors import UserError
from meanflow.training.config import TrainingConfig
from meanflow.training.loop import build_optimizer
from meanflow.training.schedule import lr_at


def test_warmup_then_constant():
    assert lr_at(0, 1.0, 4) == 0.25 and lr_at(3, 1.0, 4) == 1.0 and lr_at(10**6, 1.0, 4) == 1.0


def test_inverse_square_root_decay():
    assert lr_at(35000, 7e-5, 0, 35000) == 7e-5
    assert math.isclose(lr_at(140000, 7e-5, 0, 35000), 7e-5 / 2)
    assert math.isclose(lr_at(600000, 7e-5, 0, 35000), 7e-5 * math.sqrt(35000 / 600000))
    # warmup still ramps the decayed value
    assert math.isclose(lr_at(1, 1.0, 4, 1), 0.5 * math.sqrt(1 / 1))


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("radam", torch.optim.RAdam)])
def test_optimizers_and_eps(name, cls):
    net = torch.nn.Linear(3, 2)
    opt = build_optimizer(net, TrainingConfig(optimizer=name, eps=1e-11, betas=(0.9, 0.99)))
    assert type(opt) is cls
    assert opt.param_groups[0]["eps"] == 1e-11 and opt.param_groups[0]["betas"] == (0.9, 0.99)


@pytest.mark.parametrize("kwargs", [{"optimizer": "sgd"}, {"eps": 0.0}, {"lr_decay_steps": 0}])
def test_bad_settings_are_one_line_errors(kwargs):
    with pytest.raises(UserError):
        TrainingConfig(**kwargs)
