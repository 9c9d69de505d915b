"""The loop on pairs data: the coupled noise reaches the method, refusals, exact resume."""

from dataclasses import dataclass

import pytest
import torch
from pairs_testkit import write_tiny_pairs
from training_configs import checkpoint_tensors, tiny_toy

from meanflow.data import PointData
from meanflow.errors import UserError
from meanflow.methods.base import LossOutput, Method
from meanflow.networks import build_network
from meanflow.training import loop


@dataclass
class Recording(Method):
    """Flow-matching-like loss that records the (x, noise) of every call."""

    needs_pairs_flag: bool = False
    calls: list = None

    def __post_init__(self):
        self.calls = []

    @property
    def needs_pairs(self):
        return self.needs_pairs_flag

    def loss(self, net, x, y=None, *, noise=None, t=None, r=None, net_kwargs=None):
        self.calls.append((x.clone(), None if noise is None else noise.clone()))
        e = torch.zeros_like(x) if noise is None else noise
        t = torch.full((x.shape[0],), 0.5)
        loss = (net(0.5 * (x + e), t, torch.zeros_like(t), y) - (e - x)).square().sum(1).mean()
        return LossOutput(loss, {"loss": loss.detach()})

    def sample(self, net, noise, y=None, steps=1, schedule=None, *, net_kwargs=None, generator=None):
        return noise


def _parts(data, method):
    torch.manual_seed(0)
    net = build_network("mlp", dim=2, hidden=16, depth=1)
    return loop.Parts(data=data, net=net, method=method, shape=(2,), classes=0)


def test_the_loop_passes_each_samples_stored_noise(tmp_path):
    x = torch.randn(64, 2)
    data = PointData(x=x, y=None, num_classes=0, name="pairs", noise=10 * x + 1)
    method = Recording()
    # a non-toy data name: no end-of-run toy report (the parts given here are what the loop trains on)
    cfg = tiny_toy(tmp_path, "data.name=pairs", "training.grad_accum=2", "training.steps=3")
    loop.train(cfg, parts=_parts(data, method), echo=lambda s: None)
    assert len(method.calls) == 6  # 3 steps x 2 micro-batches of 16
    for xb, noise in method.calls:
        assert xb.shape == (16, 2) and torch.equal(noise, 10 * xb + 1)
    # data without noise: no noise keyword, the method draws its own
    method = Recording()
    plain = PointData(x=x, y=None, num_classes=0, name="plain")
    loop.train(cfg, parts=_parts(plain, method), echo=lambda s: None)
    assert all(noise is None for _, noise in method.calls)


def test_a_pairs_method_without_pairs_is_refused_before_any_folder(tmp_path):
    data = PointData(x=torch.randn(64, 2), y=None, num_classes=0, name="plain")
    with pytest.raises(UserError, match=r"method 'meanflow' trains on coupled.*`meanflow reflow-pairs RUN"):
        loop.train(tiny_toy(tmp_path), parts=_parts(data, Recording(needs_pairs_flag=True)),
                   echo=lambda s: None)
    with pytest.raises(UserError, match="method 'reflow' trains on coupled"):
        loop.train(tiny_toy(tmp_path, "method.name=reflow"), echo=lambda s: None)
    assert not (tmp_path / "runs").exists()


def test_augmentation_is_refused_on_pairs(tmp_path):
    write_tiny_pairs(tmp_path / "p", n=64)
    cfg = tiny_toy(tmp_path, "data.name=pairs", f"data.data_dir={tmp_path / 'p'}", "data.augment_p=0.12")
    from meanflow.data import build_dataset

    data = build_dataset("pairs", data_dir=tmp_path / "p")
    with pytest.raises(UserError, match="data.augment_p > 0 cannot be used with pairs data"):
        loop.train(cfg, parts=_parts(data, Recording()), echo=lambda s: None)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", ["reflow", "distill"])
def test_resume_on_pairs_is_bit_identical(tmp_path, method):
    write_tiny_pairs(tmp_path / "p", n=64, shard_size=20)
    cfg = tiny_toy(tmp_path, "data.name=pairs", f"data.data_dir={tmp_path / 'p'}", f"method.name={method}",
                   "training.steps=7", "training.grad_accum=2")
    full = loop.train(cfg, echo=lambda s: None)
    part = loop.train(cfg, stop_at=3, echo=lambda s: None)
    resumed = loop.train(cfg, resume=part, echo=lambda s: None)
    (ca, a), (cb, b) = checkpoint_tensors(full), checkpoint_tensors(resumed)
    assert cb.step == 7 and set(a) == set(b) and ca.state["sampler"] == cb.state["sampler"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
