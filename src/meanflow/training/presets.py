"""Named presets: the published settings (docs SPEC §1) and small CPU jobs.

A preset is a nested dict of overrides on top of the `Config` defaults (which are the `digits` job);
its method section is `{name, kwargs}` (the method's own defaults fill the keys not given).
`resolve_config` layers: defaults <- preset <- YAML file <- `--set KEY=VALUE` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meanflow.errors import UserError
from meanflow.networks.unet import MEANFLOW_CIFAR10
from meanflow.training.config import Config
from meanflow.training.config_io import apply_overrides, config_from_dict, config_to_dict, load_yaml, merge
from meanflow.training.pmf_presets import PMF_PRESETS


@dataclass(frozen=True)
class Preset:
    description: str
    """One line shown by `meanflow presets`."""
    overrides: dict[str, Any]
    """Nested dict merged onto the defaults."""


# ---- paper: CIFAR-10, unconditional, pixel space, EDM DDPM++ U-Net (SPEC §1) ---------------------
# Official PyTorch code: 128 per GPU x 8 GPUs = 1024, 16,000 epochs = 781,250 iterations (~800k),
# warmup 200 epochs, dropout 0.2, the 50,000 training images, its augmentation pipe at p = 0.12
# (EDM's without y-flip and rotation: 6 labels).
_CIFAR10 = {
    "data": {"name": "cifar10", "split": "train", "use_labels": False, "augment_p": 0.12,
             "augment": "meanflow"},
    # "unet" with the official network's options spelled out (what the factory "unet-meanflow"
    # builds: 256 [sin, cos] features each for t and h, resampling filter [1, 3, 3, 1]; 55,932,419
    # parameters with the 6 augmentation labels), so that `--set network.kwargs...` can change them.
    "network": {"name": "unet", "kwargs": dict(MEANFLOW_CIFAR10)},
    "method": {"name": "meanflow", "kwargs": {
        "ratio": 0.75, "time_dist": "logit_normal", "t_mean": -2.0, "t_std": 2.0, "r_mean": -2.0,
        "r_std": 2.0, "time_pairing": "sort", "norm_p": 0.75, "norm_eps": 1e-3, "omega": 1.0, "kappa": 0.0,
        "t_start": 0.0, "t_end": 1.0, "class_dropout": 0.0}},
    "training": {"batch_size": 1024, "grad_accum": 1, "steps": None, "epochs": 16000, "optimizer": "adam",
                 "lr": 6e-4, "betas": [0.9, 0.999], "weight_decay": 0.0, "warmup_steps": 0,
                 "warmup_epochs": 200, "grad_clip": None, "ema_decays": [0.9999, 0.99995, 0.9996],
                 "ema_warmup": False, "num_threads": 0,
                 "checkpoint_every": 10000, "keep_last": 3},
    "logging": {"log_every": 100, "sample_every": 10000, "sample_count": 64},
}
_CIFAR10_V1 = merge(_CIFAR10, {"method": {"name": "meanflow", "kwargs": {
    **_CIFAR10["method"]["kwargs"], "t_mean": -0.6, "t_std": 1.6, "r_mean": -4.0, "r_std": 1.6,
    "time_pairing": "min"}}})



# ---- consistency models on CIFAR-10 (Song et al. 2023), from the reference JAX code's configs
# (openai/consistency_models_cifar10: cifar10_ve_ct_adaptive.py, cifar10_ve_cd.py): batch 512, 800k
# iterations, EMA 0.9999 for evaluation, dropout 0, sigma_data 0.5, warmup 1e7 images / 512 = 19,531
# steps, no gradient clipping. Differences here, stated in the descriptions: Adam instead of RAdam,
# L2 instead of LPIPS (no pretrained LPIPS weights), the DDPM++ U-Net instead of NCSN++, no random
# flips; CD's student starts from scratch unless `--init-from` names the teacher run (the code's way).
def _cifar10_cm(method: dict, lr: float) -> dict:
    return {
        "data": {"name": "cifar10", "use_labels": False, "augment_p": 0.0},
        "network": {"name": "unet", "kwargs": {
            "model_channels": 128, "channel_mult": [2, 2, 2], "num_blocks": 4, "attn_resolutions": [16],
            "dropout": 0.0}},
        "method": method,
        "training": {"batch_size": 512, "grad_accum": 1, "steps": 800_000, "epochs": None,
                     "optimizer": "adam", "lr": lr, "betas": [0.9, 0.999], "weight_decay": 0.0,
                     "warmup_steps": 19_531, "warmup_epochs": None, "grad_clip": None,
                     "ema_decays": [0.9999], "ema_warmup": False, "num_threads": 0,
                     "checkpoint_every": 10000, "keep_last": 3},
        "logging": {"log_every": 100, "sample_every": 10000, "sample_count": 64},
    }


_CIFAR10_CT = _cifar10_cm({"name": "ct", "kwargs": {"s0": 2, "s1": 150, "mu0": 0.9, "sigma_data": 0.5,
                                                     "metric": "l2"}}, lr=2e-4)
# The code's CIFAR-10 CD: N = 18, Heun, no separate target (mu = 0).
_CIFAR10_CD = _cifar10_cm({"name": "cd", "kwargs": {"num_scales": 18, "mu": 0.0, "solver": "heun",
                                                     "sigma_data": 0.5, "metric": "l2"}}, lr=4e-4)

# ---- paper: ImageNet 256, SD-VAE latents 32x32x4, class-conditional DiT (SPEC §1) ----------------
# Trained on a latent cache: a fresh draw z = 0.18215 (mean + std e) of each stored posterior per step.
def _imagenet(net: str, omega: float, kappa: float, t_start: float, t_end: float, epochs: int) -> dict:
    return {
        # data.data_dir: the cache of `meanflow encode IMAGENET/train CACHE --flips` (SD-VAE ft-mse)
        "data": {"name": "latent_cache", "use_labels": True, "augment_p": 0.0},
        "network": {"name": net, "kwargs": {"input_size": 32, "in_channels": 4, "num_classes": 1000}},
        "method": {"name": "meanflow", "kwargs": {
            "ratio": 0.25, "time_dist": "logit_normal", "t_mean": -0.4, "t_std": 1.0, "r_mean": -0.4,
            "r_std": 1.0, "time_pairing": "sort", "norm_p": 1.0, "norm_eps": 0.01, "omega": omega,
            "kappa": kappa, "t_start": t_start, "t_end": t_end, "class_dropout": 0.1}},
        "training": {"batch_size": 256, "grad_accum": 1, "steps": None, "epochs": epochs,
                     "optimizer": "adamw", "lr": 1e-4, "betas": [0.9, 0.95], "weight_decay": 0.0,
                     "warmup_steps": 0,
                     "warmup_epochs": None, "grad_clip": None, "ema_decays": [0.9999],
                     "ema_warmup": False, "num_threads": 0,
                     "checkpoint_every": 10000, "keep_last": 3},
        "logging": {"log_every": 100, "sample_every": 10000, "sample_count": 64},
    }


# ---- CPU jobs --------------------------------------------------------------------------------------
# digits: the dataclass defaults plus the recipe below. The network was chosen by measurement on 2 shared
# cores (1 thread, batch 128): MLP 512x4 (3.8M params) 0.1 s/step, recognisable 1-step digits from ~1000
# steps; a 2-level U-Net (32 ch, 0.7M) 0.25 s/step; a 4-block DiT (patch 2, width 128) 0.6 s/step.
# The recipe was chosen by the legibility measure (`meanflow.evaluation.digit_legibility`: share of 1,000
# 1-step samples a digit classifier labels with confidence >= 0.9; real held-out digits 0.90), seed 0,
# EMA 0.999 (issue 24): the dataclass defaults (unconditional, LN(-0.4, 1), lr 1e-3, 2,500 steps) 0.41;
# class-conditional with trained-in guidance w = 2 0.83 / 0.74 / 0.73 at 1,000 / 2,000 / 2,500 steps;
# plus t, r ~ U(0, 1) 0.97 / 0.90 / 0.91; plus lr 5e-4 0.985 / 0.95 at 1,000 / 2,000 steps (p = 0.5 in
# place of U(0, 1): 0.88 / 0.69). Guidance costs one more forward per step (+28% CPU time), so 2,000
# steps take the time 2,500 took.
_DIGITS: dict[str, Any] = {
    "data": {"use_labels": True},
    "method": {"kwargs": {"time_dist": "uniform", "omega": 2.0, "class_dropout": 0.1}},
    "training": {"steps": 2000, "lr": 5e-4},
}

_MNIST = {
    # Measured on 2 shared cores, 1 thread, batch 64: this U-Net 0.7 s/step; the 32-channel 3-level
    # one 2 s/step; an MLP 1024x4 0.14 s/step but still noisy, barely legible digits at 1,500 steps.
    "data": {"name": "mnist", "split": "train", "use_labels": True},
    "network": {"name": "unet", "kwargs": {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
                                           "attn_resolutions": [], "dropout": 0.0}},
    "method": {"name": "meanflow", "kwargs": {"ratio": 0.25, "t_mean": -0.4, "t_std": 1.0, "r_mean": -0.4,
                                              "r_std": 1.0, "norm_p": 1.0, "norm_eps": 0.01,
                                              "class_dropout": 0.1}},
    "training": {"batch_size": 64, "steps": 4000, "lr": 2e-3, "warmup_steps": 200, "grad_clip": 1.0,
                 "ema_decays": [0.999, 0.9999], "checkpoint_every": 500},
    "logging": {"log_every": 50, "sample_every": 500, "sample_count": 100},
}
_FASHION = merge(_MNIST, {"data": {"name": "fashion-mnist"}})

# The adaptive weight's power is p = 0.5 (the paper's Table 1 setting beside its default p = 1), chosen by
# the seeded head-to-head (docs/results.md, "recipe" and "ablations"): at this preset's width and batch,
# 3 seeds, checkerboard sliced W2 at 1/2/4 steps is 0.070/0.063/0.072 with p = 0.5 against
# 0.091/0.117/0.127 with p = 1; with p = 1 more steps are worse than one.
_TOY = {
    "data": {"name": "checkerboard", "use_labels": False, "num_points": 100_000},
    "network": {"name": "mlp", "kwargs": {"hidden": 256, "depth": 4}},
    "method": {"name": "meanflow", "kwargs": {"ratio": 0.25, "t_mean": -0.4, "t_std": 1.0, "r_mean": -0.4,
                                              "r_std": 1.0, "norm_p": 0.5, "norm_eps": 0.01}},
    "training": {"batch_size": 512, "steps": 2000, "lr": 1e-3, "warmup_steps": 100, "grad_clip": 1.0,
                 "ema_decays": [0.999], "checkpoint_every": 1000},
    "logging": {"log_every": 50, "sample_every": 1000, "sample_count": 4096},
}

# ---- iMF (arXiv 2512.02012), official code Lyy-iiis/imeanflow: configs/train_config.yml (B/2: 640
# epochs, batch 1024, lr 1e-4 with a 10-epoch warmup, Adam b2 0.95, constant EMA 0.9999) and
# configs/eval_config.yml (sampling w and interval per released checkpoint). Only B/2's training config is
# released; the other sizes reuse it. -----------------------------------------------------------------
def _imagenet_imf(net: str, omega: float, t_min: float, t_max: float) -> dict:
    cfg = _imagenet(net, 1.0, 0.5, 0.0, 1.0, 640)
    cfg["method"] = {"name": "imf", "kwargs": {
        "ratio": 0.5, "time_dist": "logit_normal", "t_mean": -0.4, "t_std": 1.0, "norm_p": 1.0,
        "norm_eps": 0.01, "omega_max": 8.0, "omega_beta": 1.0, "class_dropout": 0.1,
        "sample_omega": omega, "sample_t_min": t_min, "sample_t_max": t_max}}
    cfg["training"].update({"batch_size": 1024, "warmup_epochs": 10})
    return cfg


# ---- α-Flow (arXiv 2510.20771), official code snap-research/alphaflow@b0fef77:
# infra/experiments/experiments-alphaflow.yaml (B/2: 400K steps; B/2-cfg and XL/2-cfg: 1.2M; batch 256,
# Adam (0.9, 0.95) lr 1e-4 constant, weight decay 0, dropout 0; the α window in steps becomes a fraction
# of the run). Not in the released configs: the EMA decay (0.9999 here), the time distributions and ε
# (the method's defaults: LN(-0.4, 1), 1e-3). ---------------------------------------------------------
def _imagenet_alphaflow(net: str, steps: int, ratio_fm: float, window: tuple[float, float], omega: float,
                        kappa: float, t_max: float, dropout: float, clamp: float | None) -> dict:
    cfg = _imagenet(net, 1.0, 0.0, 0.0, 1.0, 0)
    cfg["method"] = {"name": "alphaflow", "kwargs": {
        "ratio_fm": ratio_fm, "alpha_start": 1.0, "alpha_end": 0.0, "alpha_schedule": "sigmoid",
        "alpha_window": list(window), "gamma": 25.0, "alpha_snap": 0.005, "clamp_target": clamp,
        "omega": omega, "kappa": kappa, "t_min": 0.0, "t_max": t_max, "class_dropout": dropout,
        "sampler": "consistency"}}
    cfg["training"].update({"steps": steps, "epochs": None, "optimizer": "adam"})
    return cfg


# ---- Decoupled MeanFlow (arXiv 2510.24474), official code kyungmnlee/dmf@2273cce:
# scripts/train_dmf_xl_2_256.sh (DMFT-XL/2, dmf-depth 20, guidance "mg" ω 0.6 on t in [0, 0.7], P-mean
# 0.0 / 0.4 / -1.2, 400K steps, bf16) and train_dmf.py (batch 256, AdamW 1e-4 (0.9, 0.95), wd 0, clip 1,
# EMA 0.9999, label dropout 0.1). Started with --init-from a flow-matching run of the same DiT (the paper:
# SiT-XL/2 + REPA). ---------------------------------------------------------------------------------------
def _imagenet_dmf(net: str, depth: int) -> dict:
    cfg = _imagenet(net, 1.0, 0.0, 0.0, 1.0, 0)
    cfg["network"]["kwargs"].update({"decoupled_depth": depth, "log_variance": True})
    cfg["method"] = {"name": "dmf", "kwargs": {
        "fm_mean": 0.0, "fm_std": 1.0, "t_mean": 0.4, "t_std": 1.0, "r_mean": -1.2, "r_std": 1.0, "eps": 0.01,
        "omega": 0.6, "g_min": 0.0, "g_max": 0.7, "class_dropout": 0.1}}
    cfg["training"].update({"steps": 400_000, "epochs": None, "grad_clip": 1.0})
    return cfg


# ---- SoFlow (arXiv 2512.15657), official code zlab-princeton/SoFlow@3b60d60: cifar.yaml and imagenet.yaml
# (method settings, steps, batch, lr, betas, EMA 0.9999), train.py (AdamW on ImageNet, RAdam on CIFAR-10,
# no warmup, no clipping; the CIFAR-10 EMA is applied every 16 steps with 0.9999^16), models.py (the
# CIFAR-10 U-Net: the MeanFlow DDPM++ one with dropout 0.3, 55,932,419 parameters with its 6 augmentation
# labels; its augment.py pipe at p = 0.12 is the "meanflow" one). This project has no RAdam: Adam with
# the same betas. -------------------------------------------------------------------------------------------
_SOFLOW_METHOD = {"rho_schedule": "exponent", "sampler": "consistency"}
_CIFAR10_SOFLOW = merge(_CIFAR10, {
    "network": {"name": "unet", "kwargs": {**MEANFLOW_CIFAR10, "dropout": 0.3}},
    "method": {"name": "soflow", "kwargs": {
        **_SOFLOW_METHOD, "ratio_fm": 0.0, "norm_p": 0.75, "norm_eps": 1e-3, "fm_mean": -0.9, "fm_std": 1.6,
        "t_mean": -0.9, "t_std": 1.6, "r_mean": -4.0, "r_std": 1.6, "rho_start": 1.0, "rho_end": 3.125e-4,
        "cfg_scale": 1.0, "mix_ratio": 1.0, "class_dropout": 0.0, "cfg_decay_time": 1.0}},
    "training": {"steps": 800_000, "epochs": None, "optimizer": "radam", "lr": 1e-4, "betas": [0.9, 0.999],
                 "warmup_epochs": None, "ema_decays": [0.9999]},
})


# ---- sCM (arXiv 2410.11081) as NVlabs/FastGen@34f30e8 records it: fastgen/configs/methods/config_scm.py
# (RAdam (0.9, 0.99) lr 1e-4 wd 0, no warm-up, grad clip 1e6 = none, σ_d 0.5, ln σ ~ N(-1.0, 1.4), tangent
# warm-up 10,000, c = 0.1, dropout 0.2), experiments/EDM/config_sct_cifar10.py (batch 512, 350K steps, σ up
# to 800 in training, EMA 0.9999 / 0.99995 / 0.9996; FastGen starts from EDM's pretrained CIFAR-10 model:
# pass it as training.init_from), experiments/EDM/config_scd_in64.py (Adam (0.9, 0.99) lr 7e-5 eps 1e-11,
# inverse-sqrt decay after 35K, batch 1024, 600K steps, grad clip 10, dropout 0, bf16, P_std 1.6, no teacher
# guidance). The networks are this project's: EDM's DDPM++ sizes on CIFAR-10; ADM's ImageNet-64 sizes
# (192 channels, [1, 2, 3, 4], 3 blocks, attention at 32/16/8) on this project's U-Net. ----------------------
_SCM_TRAINING = {"grad_accum": 1, "epochs": None, "betas": [0.9, 0.99], "weight_decay": 0.0,
                 "warmup_steps": 0, "warmup_epochs": None, "ema_decays": [0.9999, 0.99995, 0.9996],
                 "ema_warmup": False}
_CIFAR10_SCT = merge(_CIFAR10, {
    "data": {"augment_p": 0.0},
    "network": {"name": "unet-ddpmpp", "kwargs": {"dropout": 0.2}},
    "method": {"name": "sct", "kwargs": {
        "sigma_data": 0.5, "p_mean": -1.0, "p_std": 1.4, "sigma_min": 0.002, "sigma_max": 800.0,
        "warmup_steps": 10_000, "tangent_norm": "rms", "norm_const": 0.1, "prior_weight": True,
        "adaptive_weight": True, "sample_sigma_max": 80.0, "sample_sigma_mid": 0.821}},
    "training": {**_SCM_TRAINING, "batch_size": 512, "steps": 350_000, "optimizer": "radam", "lr": 1e-4,
                 "eps": 1e-8, "lr_decay_steps": None, "grad_clip": None},
})
_IMAGENET64_SCD = {
    # data.data_dir: an ImageNet train folder (one subfolder per class), center-cropped to 64x64
    "data": {"name": "image-folder", "use_labels": True, "augment_p": 0.0, "options": {"resolution": 64}},
    "network": {"name": "unet", "kwargs": {"model_channels": 192, "channel_mult": [1, 2, 3, 4],
                                           "num_blocks": 3, "attn_resolutions": [32, 16, 8], "dropout": 0.0}},
    "method": {"name": "scd", "kwargs": {
        "sigma_data": 0.5, "p_mean": -1.0, "p_std": 1.6, "sigma_min": 0.002, "sigma_max": 80.0,
        "warmup_steps": 10_000, "tangent_norm": "rms", "norm_const": 0.1, "prior_weight": True,
        "adaptive_weight": True, "sample_sigma_max": 80.0, "sample_sigma_mid": 1.1, "guidance": 1.0}},
    "training": {**_SCM_TRAINING, "batch_size": 1024, "steps": 600_000, "optimizer": "adam", "lr": 7e-5,
                 "eps": 1e-11, "lr_decay_steps": 35_000, "grad_clip": 10.0, "precision": "bf16",
                 "num_threads": 0, "checkpoint_every": 10000, "keep_last": 3},
    "logging": {"log_every": 100, "sample_every": 10000, "sample_count": 64},
}


def _imagenet_soflow(net: str, steps: int) -> dict:
    cfg = _imagenet(net, 1.0, 0.0, 0.0, 1.0, 0)
    cfg["method"] = {"name": "soflow", "kwargs": {
        **_SOFLOW_METHOD, "ratio_fm": 0.75, "norm_p": 1.0, "norm_eps": 0.01, "fm_mean": -0.2, "fm_std": 1.0,
        "t_mean": 0.2, "t_std": 0.8, "r_mean": -1.0, "r_std": 0.8, "rho_start": 0.1, "rho_end": 0.002,
        "cfg_scale": 3.0, "mix_ratio": 0.25, "class_dropout": 0.1, "cfg_decay_time": 0.8}}
    cfg["training"].update({"steps": steps, "epochs": None, "optimizer": "adamw", "betas": [0.9, 0.99]})
    return cfg


PRESETS: dict[str, Preset] = {
    "digits": Preset("default CPU job: class-conditional 1-step MeanFlow (w = 2) on sklearn 8x8 digits "
                     "(1,797), MLP, 3.5-6 min on 2 cores", _DIGITS),
    "mnist": Preset("CPU: class-conditional 1-step MeanFlow on MNIST 28x28, 16-ch U-Net, 1-1.7 h on 2 cores",
                    _MNIST),
    "fashion-mnist": Preset("CPU: as mnist on Fashion-MNIST", _FASHION),
    "toy-2d": Preset("CPU: MeanFlow (p = 0.5) with an MLP on the 2-D checkerboard; sliced W2 / energy",
                     _TOY),
    "cifar10": Preset("paper: CIFAR-10 uncond., DDPM++ U-Net, batch 1024, lr 6e-4, LN(-2,2), 75% r!=t",
                      _CIFAR10),
    "cifar10-v1": Preset("official PyTorch 'v1': cifar10 with t~LN(-0.6,1.6), r~LN(-4,1.6), r=min(t,r)",
                         _CIFAR10_V1),
    "cifar10-ct": Preset("paper code: consistency training on CIFAR-10, batch 512, 800k it, s1=150 (FID 8.70 "
                         "with LPIPS; here L2, Adam)", _CIFAR10_CT),
    "cifar10-cd": Preset("paper code: consistency distillation on CIFAR-10, N=18 Heun (FID 3.55 with LPIPS "
                         "and an EDM teacher; set training.teacher)", _CIFAR10_CD),
    "imagenet-b4": Preset("paper: ImageNet-256 latents, DiT-B/4, w=1.0 k=0.5 [0,1], 240 ep",
                          _imagenet("dit-b/4", 1.0, 0.5, 0.0, 1.0, 240)),
    "imagenet-b2": Preset("paper: ImageNet-256 latents, DiT-B/2, w=1.0 k=0.5 [0,1], 240 ep (FID 6.17)",
                          _imagenet("dit-b/2", 1.0, 0.5, 0.0, 1.0, 240)),
    # SPEC leaves omega/kappa of M/2 blank; B/2's guidance is used until the paper's value is checked.
    "imagenet-m2": Preset("paper: ImageNet-256 latents, DiT-M/2, 240 ep (FID 5.01; guidance as B/2)",
                          _imagenet("dit-m/2", 1.0, 0.5, 0.0, 1.0, 240)),
    "imagenet-l2": Preset("paper: ImageNet-256 latents, DiT-L/2, w=0.2 k=0.92 [0,0.8], 240 ep (FID 3.84)",
                          _imagenet("dit-l/2", 0.2, 0.92, 0.0, 0.8, 240)),
    "imagenet-xl2": Preset("paper: ImageNet-256 latents, DiT-XL/2, w=0.2 k=0.92 [0,0.75], 240 ep (FID 3.43)",
                           _imagenet("dit-xl/2", 0.2, 0.92, 0.0, 0.75, 240)),
    "imagenet-imf-b2": Preset("paper (iMF): ImageNet-256 latents, iMF-DiT-B/2, 640 ep, sample w=8 [0.4,0.65] "
                              "(FID 3.39)", _imagenet_imf("imf-dit-b/2", 8.0, 0.4, 0.65)),
    "imagenet-imf-m2": Preset("paper (iMF): iMF-DiT-M/2, B/2's training config, sample w=10.5 [0.4,0.6] "
                              "(FID 2.27)", _imagenet_imf("imf-dit-m/2", 10.5, 0.4, 0.6)),
    "imagenet-imf-l2": Preset("paper (iMF): iMF-DiT-L/2, B/2's training config, sample w=10.5 [0.4,0.6] "
                              "(FID 1.86)", _imagenet_imf("imf-dit-l/2", 10.5, 0.4, 0.6)),
    "imagenet-imf-xl2": Preset("paper (iMF): iMF-DiT-XL/2, B/2's training config, sample w=8 [0.42,0.62] "
                               "(FID 1.72)", _imagenet_imf("imf-dit-xl/2", 8.0, 0.42, 0.62)),
    "imagenet-alphaflow-b2": Preset(
        "paper (α-Flow): ImageNet-256 latents, DiT-B/2, 400K steps, no guidance (1/2-NFE FID 40.2/37.1)",
        _imagenet_alphaflow("dit-b/2", 400_000, 0.5, (0.0, 1.0), 1.0, 0.0, 1.0, 0.0, None)),
    "imagenet-alphaflow-b2-cfg": Preset(
        "paper (α-Flow): DiT-B/2, 1.2M steps, w=1 k=0.5, 25% r=t (1/2-NFE FID 5.40/5.01)",
        _imagenet_alphaflow("dit-b/2", 1_200_000, 0.25, (0.0, 1.0), 1.0, 0.5, 1.0, 0.1, None)),
    "imagenet-alphaflow-xl2": Preset(
        "paper (α-Flow): DiT-XL/2, 1.2M steps, w=0.2 k=0.92 (0,0.75), α moves at 600K-1M, clip 4 "
        "(1/2-NFE FID 2.95/2.34)",
        _imagenet_alphaflow("dit-xl/2", 1_200_000, 0.5, (0.5, 1_000_000 / 1_200_000), 0.2, 0.92, 0.75, 0.1,
                            4.0)),
    "imagenet-dmf-xl2": Preset(
        "paper (DMF): DiT-XL/2 from a flow-matching run (--init-from), last 8 of 28 blocks on r, w=0.6 "
        "[0,0.7], 400K steps (1-NFE FID 2.16, 4-NFE 1.51)", _imagenet_dmf("dit-xl/2", 20)),
    "cifar10-soflow": Preset(
        "paper code (SoFlow): CIFAR-10 uncond., U-Net (dropout 0.3), batch 1024, 800K steps, all rows "
        "consistency, ρ 1 -> 3.1e-4, RAdam (1/2-NFE FID 2.86/2.28)", _CIFAR10_SOFLOW),
    "cifar10-sct": Preset(
        "FastGen config (sCT): CIFAR-10 uncond., DDPM++ U-Net, batch 512, 350K steps, RAdam 1e-4, ln σ ~ "
        "N(-1, 1.4) (1/2-NFE FID 2.97/2.06; start from a pretrained model: training.init_from)",
        _CIFAR10_SCT),
    "imagenet64-scd": Preset(
        "FastGen config (sCD): ImageNet 64x64 cond., ADM-size U-Net, batch 1024, 600K steps, Adam 7e-5 "
        "inverse-sqrt, bf16 (2-NFE FID 1.48; set training.teacher and training.init_from)", _IMAGENET64_SCD),
    "imagenet-soflow-b4": Preset(
        "paper code (SoFlow): ImageNet-256 latents, DiT-B/4, 400K steps (80 ep), 75% FM, w=3 m=0.25 "
        "(1/2-NFE FID 11.59/8.22; B/2 at 240 ep: 4.85/4.24)", _imagenet_soflow("dit-b/4", 400_000)),
    "imagenet-xl2-plus": Preset("paper: ImageNet-256 latents, DiT-XL/2, w=1.0 k=0.5 [0.3,0.8], 1000 ep",
                                _imagenet("dit-xl/2", 1.0, 0.5, 0.3, 0.8, 1000)),
    # pixel MeanFlow on ImageNet pixels (meanflow.training.pmf_presets: the official configs, key by key)
    **{name: Preset(description, overrides) for name, (description, overrides) in PMF_PRESETS.items()},
}
DEFAULT_PRESET = "digits"


def preset_dict(name: str) -> dict[str, Any]:
    """Defaults merged with preset `name`, as a nested dict."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r} (choose from: {', '.join(PRESETS)})")
    return merge(merge(config_to_dict(Config()), PRESETS[name].overrides), {"preset": name})


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """defaults <- preset (default 'digits') <- YAML file <- `--set` overrides -> validated `Config`.

    A YAML file that itself names a `preset` key starts from that preset unless `preset` is given.
    Each layer that names another method (or network) without kwargs of its own drops the kwargs of
    the layers below (see `config_io.merge`); the `--set` overrides together are one layer.
    """
    file_data = load_yaml(config_file) if config_file is not None else {}
    name = preset or file_data.get("preset") or DEFAULT_PRESET
    if not isinstance(name, str):
        raise UserError(f"preset must be a string, got {name!r}")
    data = preset_dict(name)
    data = merge(data, file_data)
    return config_from_dict(apply_overrides(data, overrides))
