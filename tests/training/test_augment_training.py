"""Training with EDM augmentation (data.augment_p > 0): exact resume, the paper's CIFAR-10 presets,
generation with zero augmentation labels, and the refusal for networks without augment labels."""

import pytest
import torch
from training_configs import checkpoint_tensors

from meanflow.data import ImageData
from meanflow.errors import UserError
from meanflow.sampling import generate, generation_kwargs
from meanflow.training import loop
from meanflow.training.build import build_method_from, build_net, network_kwargs
from meanflow.training.checkpoint import Checkpoint
from meanflow.training.load import load_generator
from meanflow.training.presets import resolve_config

UNCOND = ("data.use_labels=false", "method.kwargs.omega=1.0", "method.kwargs.class_dropout=0.0")
TINY_UNET = ("network={name: unet, kwargs: {model_channels: 8, channel_mult: [1, 2], num_blocks: 1, "
             "attn_resolutions: [], dropout: 0.1}}")


def _outputs(tmp_path):
    return [f"logging.out_dir={tmp_path / 'runs'}", "logging.progress=false", "logging.tensorboard=false",
            "logging.log_every=1", "logging.sample_every=1000", "logging.sample_count=4"]


def tiny_digits(tmp_path, *extra):
    return resolve_config("digits", overrides=[
        *_outputs(tmp_path), *UNCOND, TINY_UNET,
        "data.augment_p=0.5", "training.batch_size=8", "training.steps=5",
        "training.warmup_steps=0", "training.checkpoint_every=1000", "training.ema_decays=[0.9]", *extra])


def test_augmented_run_resumes_bit_identically(tmp_path):
    cfg = tiny_digits(tmp_path, "training.grad_accum=2")
    full = loop.train(cfg, echo=lambda s: None)
    part = loop.train(cfg, stop_at=2, echo=lambda s: None)
    resumed = loop.train(cfg, resume=part, echo=lambda s: None)
    (_, a), (cb, b) = checkpoint_tensors(full), checkpoint_tensors(resumed)
    assert cb.step == 5 and set(a) == set(b)
    assert "model/map_augment.weight" in a and a["model/map_augment.weight"].shape[1] == 9
    for k in a:
        assert torch.equal(a[k], b[k]), k
    method, net, _ = load_generator(full, ema="raw")
    assert net.augment_dim == 9
    kw = generation_kwargs(net, 3)
    assert kw is not None and kw["augment_labels"].shape == (3, 9) and not kw["augment_labels"].any()
    x = generate(method, net, 0, 3, steps=1, seed=0)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_augment_changes_training(tmp_path):
    """Same seed, with and without augmentation: the weights differ (the pipe is really applied)."""
    a = checkpoint_tensors(loop.train(tiny_digits(tmp_path, "training.steps=2"), echo=lambda s: None))[1]
    b = checkpoint_tensors(loop.train(tiny_digits(tmp_path, "training.steps=2", "data.augment_p=0",
                                        "network.kwargs.augment_dim=9"), echo=lambda s: None))[1]
    assert not torch.equal(a["model/map_augment.weight"], b["model/map_augment.weight"])
    # without augmentation no labels are passed: the bias-free label map gets no gradient
    cfg = tiny_digits(tmp_path)
    torch.manual_seed(cfg.training.seed)  # as the loop does before building the network
    init = build_net(cfg, (1, 8, 8), 0).state_dict()["map_augment.weight"]
    torch.testing.assert_close(b["model/map_augment.weight"], init)


@pytest.mark.parametrize("name", ["cifar10", "cifar10-v1"])
def test_cifar10_presets_train_a_step(tmp_path, name):
    cfg = resolve_config(name, overrides=[
        *_outputs(tmp_path), "network.kwargs={model_channels: 8, channel_mult: [1, 2], num_blocks: 1, "
        "attn_resolutions: [16], dropout: 0.2}", "training.batch_size=4", "training.steps=1",
        "training.epochs=null", "training.warmup_epochs=null", "training.ema_decays=[0.9]"])
    assert cfg.data.augment_p == 0.12 and cfg.network.name == "unet"
    g = torch.Generator().manual_seed(0)
    data = ImageData(x=torch.rand(8, 3, 32, 32, generator=g) * 2 - 1, y=None, num_classes=0, name="cifar10")
    torch.manual_seed(0)
    net = build_net(cfg, (3, 32, 32), 0)
    assert net.augment_dim == 6  # the official MeanFlow pipe's labels (data.augment = "meanflow")
    parts = loop.Parts(data, net, build_method_from(cfg, 0), (3, 32, 32), 0)
    run = loop.train(cfg, parts=parts, echo=lambda s: None)
    assert Checkpoint(run).step == 1 and (run / "samples.png").is_file()


def test_augment_needs_a_network_with_augment_labels(tmp_path):
    cfg = resolve_config("digits", overrides=[*_outputs(tmp_path), *UNCOND, "data.augment_p=0.12"])  # mlp
    with pytest.raises(UserError, match="augmentation labels"):
        network_kwargs(cfg, (1, 8, 8), 0)
    with pytest.raises(UserError, match="augmentation labels"):
        loop.train(cfg, echo=lambda s: None)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(UserError, match="augment_dim"):
        network_kwargs(tiny_digits(tmp_path, "network.kwargs.augment_dim=4"), (1, 8, 8), 0)
