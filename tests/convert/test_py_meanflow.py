"""Conversion of official MeanFlow PyTorch checkpoints (py-meanflow format, built from its documented
names and shapes): identical networks, EMAs with their decays, optimizer state, config, safe reading."""

from __future__ import annotations

import pytest
import torch
from py_meanflow_testkit import DECAYS, TINY_UNET, official_checkpoint, official_names, tiny_official_unet

import meanflow
from meanflow.convert import convert_py_meanflow, read_torch_checkpoint, write_converted
from meanflow.convert.py_meanflow import network_options
from meanflow.errors import UserError
from meanflow.training.checkpoint import Checkpoint
from meanflow.training.config_io import config_from_dict


def _inputs(b=3):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(b, 3, 8, 8, generator=g)
    t = torch.rand(b, generator=g)
    return z, t, t * torch.rand(b, generator=g), torch.randn(b, 6, generator=g)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(official checkpoint dict, its source networks, the converted run folder)."""
    net = tiny_official_unet()
    obj = official_checkpoint(net)
    folder = tmp_path_factory.mktemp("conv")
    pth = folder / "checkpoint-last.pth"
    torch.save(obj, pth)
    ckpt = write_converted(convert_py_meanflow(read_torch_checkpoint(pth), str(pth)), folder / "run")
    return obj, net, ckpt


def test_sizes_are_read_from_the_weights():
    obj = official_checkpoint()
    raw = {k[4:]: v for k, v in obj["model"].items() if k.startswith("net.")}
    kw = network_options(raw, {"arch": "unet", "dropout": 0.2}, "x")
    want = {**TINY_UNET, "channel_mult": [1, 2], "attn_resolutions": [4], "resample_filter": [1, 3, 3, 1],
            "channel_mult_emb": 4}
    assert kw == want


def test_round_trip_gives_identical_outputs(converted):
    obj, net, ckpt = converted
    assert ckpt.parent.name == "checkpoints" and (ckpt.parent.parent / "config.yaml").is_file()
    z, t, h, a = _inputs()
    method, loaded, cfg = meanflow.load_generator(ckpt.parent.parent, ema="raw")
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, t, h, augment_labels=a), net(z, t, h, augment_labels=a),
                                   rtol=0, atol=0)
        x = method.sample(loaded, z)
        torch.testing.assert_close(x, z - net(z, torch.ones(3), torch.ones(3)), rtol=0, atol=0)
    assert cfg.network.name == "unet" and cfg.data.augment == "meanflow" and cfg.data.augment_p == 0.12
    assert cfg.method.kwargs["time_pairing"] == "min" and cfg.method.kwargs["r_mean"] == -4.0
    assert cfg.training.batch_size == 1024 and cfg.training.ema_decays == list(DECAYS)


@pytest.mark.parametrize("i, decay", list(enumerate(DECAYS)))
def test_each_ema_keeps_its_decay(converted, i, decay):
    obj, _, ckpt = converted
    prefix = ("net_ema", "net_ema1", "net_ema2")[i]
    _, loaded, _ = meanflow.load_generator(ckpt, ema=decay)
    want = {k: v for k, v in obj["model"].items() if k.startswith(prefix + ".")}
    got = {f"{prefix}.{k}": v for k, v in official_names(loaded).items()}
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_default_ema_is_the_first_decay(converted):
    _, loaded, _ = meanflow.load_generator(converted[2])
    _, first, _ = meanflow.load_generator(converted[2], ema=DECAYS[0])
    for a, b in zip(loaded.state_dict().values(), first.state_dict().values()):
        assert torch.equal(a, b)


def test_optimizer_state_and_resume_metadata(converted):
    obj, net, path = converted
    ckpt = Checkpoint(path)
    assert ckpt.step == 192 and ckpt.ema_decays == list(DECAYS)
    assert ckpt.state["sampler"] == {"epoch": 4, "position": 0, "seed": 0, "n": 50_000}
    cfg = config_from_dict(ckpt.config)
    from meanflow.training.loop import build_optimizer, check_resumable

    check_resumable(ckpt, cfg)
    opt = build_optimizer(net, cfg.training)
    opt.load_state_dict(ckpt.optimizer())
    want = obj["optimizer"]["state"]
    for i, p in enumerate(net.parameters()):
        torch.testing.assert_close(opt.state[p]["exp_avg"], want[i]["exp_avg"], rtol=0, atol=0)


def test_v0_sampler_maps_to_the_cifar10_preset():
    obj = official_checkpoint(tr_sampler="v0", P_mean_t=-2.0, P_std_t=2.0, P_mean_r=-2.0, P_std_r=2.0)
    cfg = config_from_dict(convert_py_meanflow(obj).config)
    assert cfg.preset == "cifar10" and cfg.method.kwargs["time_pairing"] == "sort"
    assert (cfg.method.kwargs["t_mean"], cfg.method.kwargs["r_std"]) == (-2.0, 2.0)


def test_unaugmented_and_box_filter_variants():
    net = tiny_official_unet(augment_dim=0, resample_filter=(1, 1))
    conv = convert_py_meanflow(official_checkpoint(net))
    cfg = config_from_dict(conv.config)
    assert cfg.data.augment_p == 0.0 and cfg.network.kwargs["resample_filter"] == [1, 1]


@pytest.mark.parametrize("edit, match", [
    (lambda o: o["model"].pop("net_ema2.map_layer0.weight"), "net_ema2"),
    (lambda o: [o["model"].pop(k) for k in list(o["model"]) if k.startswith("net_ema1.")],
     "no EMA weights net_ema1"),
    (lambda o: setattr(o["args"], "arch", "dit"), "another architecture"),
    (lambda o: o["model"].update({"net.map_layer0.weight": torch.zeros(32, 7)}), "map_layer0"),
    (lambda o: o.update(args={"arch": "unet"}), "Namespace"),
    (lambda o: o.pop("model"), "no 'model'"),
    (lambda o: setattr(o["args"], "dataset", "mnist"), "CIFAR-10"),
])
def test_bad_checkpoints_are_user_errors(edit, match):
    obj = official_checkpoint()
    edit(obj)
    with pytest.raises(UserError, match=match):
        convert_py_meanflow(obj, "ckpt.pth")
