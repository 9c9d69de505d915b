"""The paper presets reproduce the published settings of SPEC §1 exactly."""

from types import SimpleNamespace

import pytest
import torch

from meanflow.training.build import build_net
from meanflow.training.presets import resolve_config

IMAGENET = {  # name: (network, omega, kappa, t_start, t_end, epochs)
    "imagenet-b4": ("dit-b/4", 1.0, 0.5, 0.0, 1.0, 240),
    "imagenet-b2": ("dit-b/2", 1.0, 0.5, 0.0, 1.0, 240),
    "imagenet-l2": ("dit-l/2", 0.2, 0.92, 0.0, 0.8, 240),
    "imagenet-xl2": ("dit-xl/2", 0.2, 0.92, 0.0, 0.75, 240),
    "imagenet-xl2-plus": ("dit-xl/2", 1.0, 0.5, 0.3, 0.8, 1000),
    "imagenet-m2": ("dit-m/2", None, None, None, None, 240),  # SPEC leaves M/2's guidance blank
}


@pytest.mark.parametrize("name", list(IMAGENET))
def test_imagenet_presets(name):
    net, omega, kappa, t0, t1, epochs = IMAGENET[name]
    c = resolve_config(name)
    assert c.data.name == "latent_cache" and c.data.use_labels
    assert c.network.name == net
    assert c.network.kwargs == {"input_size": 32, "in_channels": 4, "num_classes": 1000}
    t, m = c.training, SimpleNamespace(**c.method.kwargs)
    assert c.method.name == "meanflow"
    assert (t.batch_size, t.lr, t.betas, t.weight_decay) == (256, 1e-4, (0.9, 0.95), 0.0)
    assert t.optimizer in ("adam", "adamw") and t.warmup_steps == 0 and t.warmup_epochs is None
    assert (t.epochs, t.steps, t.ema_decays, t.grad_accum) == (epochs, None, [0.9999], 1)
    assert t.grad_clip is None and not t.ema_warmup
    assert m.time_dist == "logit_normal" and m.time_pairing == "sort"
    assert (m.t_mean, m.t_std, m.r_mean, m.r_std) == (-0.4, 1.0, -0.4, 1.0)
    assert (m.ratio, m.norm_p, m.norm_eps, m.class_dropout) == (0.25, 1.0, 0.01, 0.1)
    if omega is not None:
        assert (m.omega, m.kappa, m.t_start, m.t_end) == (omega, kappa, t0, t1)
        assert m.omega / (1 - m.kappa) == pytest.approx({1.0: 2.0, 0.2: 2.5}[omega])


@pytest.mark.parametrize("name", ["cifar10", "cifar10-v1"])
def test_cifar10_presets(name):
    c = resolve_config(name)
    assert c.data.name == "cifar10" and not c.data.use_labels and c.data.augment_p == 0.12
    assert c.data.augment == "meanflow" and c.data.split == "train"  # the official pipe, 50,000 images
    assert c.network.name == "unet"
    # The official MeanFlow CIFAR-10 U-Net (Gsunshine/py-meanflow): 256 [sin, cos] time features each
    # for t and h, resampling filter [1, 3, 3, 1]; with its 6 augmentation labels 55,932,419 parameters,
    # the count of the official code's network (was 55,798,275 + 9 x 256 before these options).
    assert c.network.kwargs == {"model_channels": 128, "channel_mult": [2, 2, 2], "num_blocks": 4,
                                "attn_resolutions": [16], "dropout": 0.2, "channel_mult_noise": 2,
                                "embedding_order": "sin-cos", "resample_filter": [1, 3, 3, 1]}
    with torch.device("meta"):
        net = build_net(c, (3, 32, 32), 0)
    assert net.augment_dim == 6
    assert sum(p.numel() for p in net.parameters()) == 55_932_419
    t, m = c.training, SimpleNamespace(**c.method.kwargs)
    assert c.method.name == "meanflow"
    assert (t.batch_size, t.optimizer, t.lr) == (1024, "adam", 6e-4)
    assert (t.betas, t.weight_decay) == ((0.9, 0.999), 0.0)
    assert t.warmup_epochs == 200 and t.ema_decays == [0.9999, 0.99995, 0.9996]
    assert not t.ema_warmup
    assert t.grad_clip is None
    assert t.total_steps(50_000) == 781_250  # 16,000 epochs of the official code, "~800k iterations"
    assert (m.ratio, m.norm_p, m.norm_eps, m.omega, m.kappa) == (0.75, 0.75, 1e-3, 1.0, 0.0)
    if name == "cifar10":
        assert (m.t_mean, m.t_std, m.r_mean, m.r_std, m.time_pairing) == (-2.0, 2.0, -2.0, 2.0, "sort")
    else:
        assert (m.t_mean, m.t_std, m.r_mean, m.r_std, m.time_pairing) == (-0.6, 1.6, -4.0, 1.6, "min")


def test_cpu_presets():
    assert resolve_config("toy-2d").network.name == "mlp"
    assert resolve_config("toy-2d").data.name == "checkerboard"
    for name in ("mnist", "fashion-mnist"):
        c = resolve_config(name)
        assert c.data.name == name and c.data.use_labels


@pytest.mark.parametrize("name, method, lr", [("cifar10-ct", "ct", 2e-4), ("cifar10-cd", "cd", 4e-4)])
def test_consistency_cifar10_presets(name, method, lr):
    """Values of the reference JAX configs (cifar10_ve_ct_adaptive.py, cifar10_ve_cd.py)."""
    cfg = resolve_config(name)
    t, m = cfg.training, cfg.method
    assert m.name == method and m.kwargs["sigma_data"] == 0.5 and m.kwargs["metric"] == "l2"
    assert (t.batch_size, t.steps, t.lr, t.warmup_steps, t.grad_clip) == (512, 800_000, lr, 19_531, None)
    assert t.ema_decays == [0.9999] and not t.ema_warmup and cfg.network.kwargs["dropout"] == 0.0
    if method == "ct":
        assert (m.kwargs["s0"], m.kwargs["s1"], m.kwargs["mu0"]) == (2, 150, 0.9)
    else:
        assert (m.kwargs["num_scales"], m.kwargs["mu"], m.kwargs["solver"]) == (18, 0.0, "heun")


# iMF: official code Lyy-iiis/imeanflow, configs/default.py + train_config.yml (B/2 training) and
# eval_config.yml (sampling guidance per released checkpoint).
IMF = {
    "imagenet-imf-b2": ("imf-dit-b/2", 8.0, 0.4, 0.65),
    "imagenet-imf-m2": ("imf-dit-m/2", 10.5, 0.4, 0.6),
    "imagenet-imf-l2": ("imf-dit-l/2", 10.5, 0.4, 0.6),
    "imagenet-imf-xl2": ("imf-dit-xl/2", 8.0, 0.42, 0.62),
}


@pytest.mark.parametrize("name", list(IMF))
def test_imf_presets_key_by_key(name):
    net, omega, t_min, t_max = IMF[name]
    c = resolve_config(name)
    assert c.data.name == "latent_cache" and c.data.use_labels
    assert c.network.name == net
    assert c.method.name == "imf"
    assert c.method.kwargs == {
        "ratio": 0.5, "time_dist": "logit_normal", "t_mean": -0.4, "t_std": 1.0, "norm_p": 1.0,
        "norm_eps": 0.01, "omega_max": 8.0, "omega_beta": 1.0, "class_dropout": 0.1,
        "sample_omega": omega, "sample_t_min": t_min, "sample_t_max": t_max,
        **{k: v for k, v in c.method.kwargs.items() if k not in (
            "ratio", "time_dist", "t_mean", "t_std", "norm_p", "norm_eps", "omega_max", "omega_beta",
            "class_dropout", "sample_omega", "sample_t_min", "sample_t_max")}}
    t = c.training
    assert (t.batch_size, t.epochs, t.lr, t.warmup_epochs, tuple(t.betas), tuple(t.ema_decays)) == (
        1024, 640, 1e-4, 10, (0.9, 0.95), (0.9999,))


# α-Flow: snap-research/alphaflow@b0fef77 infra/experiments/experiments-alphaflow.yaml (steps, batch,
# Adam (0.9, 0.95) lr 1e-4, ratio_fm, the α window in steps, ω, κ, t_max, label dropout, clamp_utgt).
ALPHAFLOW = {
    "imagenet-alphaflow-b2": ("dit-b/2", 400_000, 0.5, [0.0, 1.0], 1.0, 0.0, 1.0, 0.0, None),
    "imagenet-alphaflow-b2-cfg": ("dit-b/2", 1_200_000, 0.25, [0.0, 1.0], 1.0, 0.5, 1.0, 0.1, None),
    "imagenet-alphaflow-xl2": ("dit-xl/2", 1_200_000, 0.5, [600_000 / 1_200_000, 1_000_000 / 1_200_000], 0.2,
                               0.92, 0.75, 0.1, 4.0),
}


@pytest.mark.parametrize("name", list(ALPHAFLOW))
def test_alphaflow_presets_key_by_key(name):
    net, steps, ratio_fm, window, omega, kappa, t_max, dropout, clamp = ALPHAFLOW[name]
    c = resolve_config(name)
    assert c.data.name == "latent_cache" and c.data.use_labels and c.network.name == net
    assert c.method.name == "alphaflow"
    k = c.method.kwargs
    got = (k["ratio_fm"], k["alpha_start"], k["alpha_end"], k["alpha_schedule"], k["gamma"], k["alpha_snap"])
    assert got == (ratio_fm, 1.0, 0.0, "sigmoid", 25.0, 0.005)
    assert k["alpha_window"] == pytest.approx(window)
    assert (k["omega"], k["kappa"], k["t_min"], k["t_max"], k["class_dropout"], k["clamp_target"]) == (
        omega, kappa, 0.0, t_max, dropout, clamp)
    t = c.training
    got = (t.steps, t.epochs, t.batch_size, t.optimizer, t.lr, tuple(t.betas), t.weight_decay, t.warmup_steps)
    assert got == (steps, None, 256, "adam", 1e-4, (0.9, 0.95), 0.0, 0)


def test_dmf_preset_key_by_key():
    """kyungmnlee/dmf@2273cce scripts/train_dmf_xl_2_256.sh and train_dmf.py."""
    c = resolve_config("imagenet-dmf-xl2")
    assert c.network.name == "dit-xl/2"
    assert (c.network.kwargs["decoupled_depth"], c.network.kwargs["log_variance"]) == (20, True)
    assert c.method.name == "dmf" and c.method.kwargs == {
        "fm_mean": 0.0, "fm_std": 1.0, "t_mean": 0.4, "t_std": 1.0, "r_mean": -1.2, "r_std": 1.0, "eps": 0.01,
        "omega": 0.6, "g_min": 0.0, "g_max": 0.7, "class_dropout": 0.1}
    t = c.training
    assert (t.steps, t.batch_size, t.optimizer, t.lr, tuple(t.betas), t.weight_decay, t.grad_clip,
            tuple(t.ema_decays)) == (400_000, 256, "adamw", 1e-4, (0.9, 0.95), 0.0, 1.0, (0.9999,))


# SoFlow: zlab-princeton/SoFlow@3b60d60 cifar.yaml / imagenet.yaml (method settings, steps, batch, lr, betas,
# EMA), train.py:170-172 (AdamW on ImageNet; RAdam on CIFAR-10),
# models.py:86-92 (the CIFAR-10 U-Net, dropout 0.3).
SOFLOW = {
    "cifar10-soflow": dict(
        ratio_fm=0.0, norm_p=0.75, norm_eps=1e-3, fm_mean=-0.9, fm_std=1.6, t_mean=-0.9, t_std=1.6,
        r_mean=-4.0, r_std=1.6, rho_start=1.0, rho_end=3.125e-4, rho_schedule="exponent", cfg_scale=1.0,
        mix_ratio=1.0, class_dropout=0.0, cfg_decay_time=1.0, sampler="consistency"),
    "imagenet-soflow-b4": dict(
        ratio_fm=0.75, norm_p=1.0, norm_eps=0.01, fm_mean=-0.2, fm_std=1.0, t_mean=0.2, t_std=0.8,
        r_mean=-1.0, r_std=0.8, rho_start=0.1, rho_end=0.002, rho_schedule="exponent", cfg_scale=3.0,
        mix_ratio=0.25, class_dropout=0.1, cfg_decay_time=0.8, sampler="consistency"),
}


@pytest.mark.parametrize("name", list(SOFLOW))
def test_soflow_presets_key_by_key(name):
    c = resolve_config(name)
    assert c.method.name == "soflow" and c.method.kwargs == SOFLOW[name]
    t = c.training
    common = (t.grad_accum, t.weight_decay, t.warmup_steps, t.warmup_epochs, t.grad_clip, tuple(t.ema_decays),
              t.ema_warmup, t.lr)
    assert common == (1, 0.0, 0, None, None, (0.9999,), False, 1e-4)
    if name == "cifar10-soflow":
        assert (t.steps, t.epochs, t.batch_size, t.optimizer, tuple(t.betas)) == (
            800_000, None, 1024, "radam", (0.9, 0.999))
        d = c.data
        got = (d.name, d.split, d.use_labels, d.augment_p, d.augment)
        assert got == ("cifar10", "train", False, 0.12, "meanflow")  # the pipe of SoFlow's augment.py
        assert c.network.name == "unet" and c.network.kwargs == {
            "model_channels": 128, "channel_mult": [2, 2, 2], "num_blocks": 4, "attn_resolutions": [16],
            "dropout": 0.3, "channel_mult_noise": 2, "embedding_order": "sin-cos",
            "resample_filter": [1, 3, 3, 1]}
        with torch.device("meta"):
            net = build_net(c, (3, 32, 32), 0)
        assert sum(p.numel() for p in net.parameters()) == 55_932_419  # the official SongUNet's count
    else:
        assert (t.steps, t.epochs, t.batch_size, t.optimizer, tuple(t.betas)) == (
            400_000, None, 256, "adamw", (0.9, 0.99))
        assert c.data.name == "latent_cache" and c.data.use_labels
        assert c.network.name == "dit-b/4"
        assert c.network.kwargs == {"input_size": 32, "in_channels": 4, "num_classes": 1000}


# sCM: NVlabs/FastGen@34f30e8 fastgen/configs/methods/config_scm.py and
# experiments/EDM/config_sct_cifar10.py / config_scd_in64.py (see presets.py).
SCM = dict(sigma_data=0.5, p_mean=-1.0, sigma_min=0.002, warmup_steps=10_000, tangent_norm="rms",
           norm_const=0.1, prior_weight=True, adaptive_weight=True, sample_sigma_max=80.0)


def test_sct_preset_key_by_key():
    c = resolve_config("cifar10-sct")
    assert c.method.name == "sct" and c.method.kwargs == {**SCM, "p_std": 1.4, "sigma_max": 800.0,
                                                          "sample_sigma_mid": 0.821}
    t = c.training
    got = (t.batch_size, t.steps, t.epochs, t.optimizer, t.lr, tuple(t.betas), t.eps, t.weight_decay,
           t.warmup_steps, t.warmup_epochs, t.grad_clip, t.lr_decay_steps, tuple(t.ema_decays), t.ema_warmup)
    assert got == (512, 350_000, None, "radam", 1e-4, (0.9, 0.99), 1e-8, 0.0, 0, None, None, None,
                   (0.9999, 0.99995, 0.9996), False)
    assert (c.data.name, c.data.use_labels, c.data.augment_p) == ("cifar10", False, 0.0)
    assert c.network.name == "unet-ddpmpp" and c.network.kwargs == {"dropout": 0.2}


def test_scd_preset_key_by_key():
    c = resolve_config("imagenet64-scd")
    assert c.method.name == "scd" and c.method.kwargs == {**SCM, "p_std": 1.6, "sigma_max": 80.0,
                                                          "sample_sigma_mid": 1.1, "guidance": 1.0}
    t = c.training
    got = (t.batch_size, t.steps, t.epochs, t.optimizer, t.lr, tuple(t.betas), t.eps, t.weight_decay,
           t.warmup_steps, t.grad_clip, t.lr_decay_steps, tuple(t.ema_decays), t.precision)
    assert got == (1024, 600_000, None, "adam", 7e-5, (0.9, 0.99), 1e-11, 0.0, 0, 10.0, 35_000,
                   (0.9999, 0.99995, 0.9996), "bf16")
    assert (c.data.name, c.data.use_labels, c.data.options) == ("image-folder", True, {"resolution": 64})
    assert c.network.name == "unet" and c.network.kwargs == {
        "model_channels": 192, "channel_mult": [1, 2, 3, 4], "num_blocks": 3, "attn_resolutions": [32, 16, 8],
        "dropout": 0.0}
