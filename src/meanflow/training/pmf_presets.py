"""Presets of pixel MeanFlow (pMF; arXiv 2601.22158) on ImageNet pixels, from the official configs.

Confirmed in github.com/Lyy-iiis/pMF (read for facts only): branch ``main`` at 75f6073
(``configs/default.py``, ``configs/pMF_{B,L}_{16,32}_config.yml``, ``configs/eval_config.yml``,
``utils/trainstate_util.py:74-77``, ``utils/ema_util.py:9-16``) and branch ``hsdp`` at 51930aa
(``configs/pMF_H_{16,32}_config.yml`` and its ``eval_config.yml``, the H sizes):

* every size: batch 1024, 320 epochs, ``optax.contrib.muon`` at a constant lr 1e-3 (no warm-up) with
  Adam b2 0.95 (``training.optimizer=muon``), no gradient clipping, EMAs by half-life 500 / 1000 /
  2000 kimg with EDM's 5% ramp, t and r ~ LN(P_mean, 0.8), half the rows r = t, ``cfg_max`` 7 (w in
  [1, 8]), label drop 0.1, adaptive weight (p 1, c 0.01), ADM centre crop, no flips
  (``dataset.use_flip = False``, ``default.py:23``), LPIPS x0.4 and ConvNeXt x0.1;
* per size (``model:`` and ``sampling:`` of each config; the EMA the released checkpoint is
  evaluated with, from ``eval_config.yml``):

  ======  ====  ===========  ======  ========  ============  =====================  ========
  size    res   noise_scale  P_mean  cfg_beta  perceptual t  sample w [t_min, t_max]  eval EMA
  ======  ====  ===========  ======  ========  ============  =====================  ========
  B/16    256   1            0.8     1         < 0.8         8.5 [0.1, 0.7]          2000
  L/16    256   1            0.8     2         < 0.8         7.0 [0.2, 0.7]          1000
  H/16    256   2            0.0     1         < 0.6 (*)     7.0 [0.2, 0.6]          1000
  B/32    512   2            0.8     1         < 0.8         6.5 [0.1, 0.7]          2000
  L/32    512   4            0.0     1         < 0.6         7.5 [0.2, 0.6]          2000
  H/32    512   4            0.0     1         < 0.6 (*)     5.5 [0.1, 0.6]          500
  ======  ====  ===========  ======  ========  ============  =====================  ========

Differences, stated in the descriptions: the perceptual weights are 0 here (the LPIPS-VGG and
ConvNeXt-V2-B weights files are the user's: set ``method.kwargs.lpips_weight=0.4``,
``lpips_weights=PATH``, ``convnext_weight=0.1``, ``convnext_weights=PATH``); the H configs also set
``tr_uniform: True`` (10% of the rows draw t and r uniformly): ``uniform_share=0.1`` here (hsdp
``pmf.py:182-203``);
(*) the H configs spell the cut-off ``convnext_max_t: 0.6``, a key the official ``pixelMeanFlow`` has
no field for (its ``perceptual_max_t`` defaults to 1.0): 0.6 here, as L/32's ``perceptual_max_t``.
The first EMA of ``ema_halflife_kimg`` is the evaluated one, so sample grids and ``--ema``'s default use it.

Published 1-NFE FID-50K (paper; README of the official code): ImageNet 256 B/16 3.12, L/16 2.52, H/16
2.22; ImageNet 512 B/32 3.70, L/32 2.75, H/32 2.48.
"""

from __future__ import annotations

from typing import Any

PMF_FID: dict[str, float] = {"b16": 3.12, "l16": 2.52, "h16": 2.22, "b32": 3.70, "l32": 2.75, "h32": 2.48}
"""Published 1-NFE FID-50K of each preset (paper Tables; official README)."""

# size: (noise_scale, P_mean, cfg_beta, perceptual_max_t, sample w, t_min, t_max, evaluated EMA in kimg)
PMF_SIZES: dict[str, tuple[float, float, float, float, float, float, float, float]] = {
    "b16": (1.0, 0.8, 1.0, 0.8, 8.5, 0.1, 0.7, 2000),
    "l16": (1.0, 0.8, 2.0, 0.8, 7.0, 0.2, 0.7, 1000),
    "h16": (2.0, 0.0, 1.0, 0.6, 7.0, 0.2, 0.6, 1000),
    "b32": (2.0, 0.8, 1.0, 0.8, 6.5, 0.1, 0.7, 2000),
    "l32": (4.0, 0.0, 1.0, 0.6, 7.5, 0.2, 0.6, 2000),
    "h32": (4.0, 0.0, 1.0, 0.6, 5.5, 0.1, 0.6, 500),
}
HALFLIVES_KIMG = (500.0, 1000.0, 2000.0)


def imagenet_pmf(size: str) -> dict[str, Any]:
    """The config overrides of preset ``imagenet-pmf-<size>`` (`size` a key of `PMF_SIZES`)."""
    noise, p_mean, beta, max_t, omega, t_min, t_max, eval_ema = PMF_SIZES[size]
    resolution = 256 if size.endswith("16") else 512
    emas = [float(eval_ema)] + [h for h in HALFLIVES_KIMG if h != eval_ema]
    return {
        # data.data_dir: the ImageNet folder (<dir>/train/<synset>/<image>)
        "data": {"name": "imagenet_pixels", "split": "train", "use_labels": True, "augment_p": 0.0,
                 "options": {"resolution": resolution, "flip": False}},
        "network": {"name": f"pmf-dit-{size[0]}/{size[1:]}", "kwargs": {"input_size": resolution,
                                                                       "in_channels": 3}},
        "method": {"name": "pmf", "kwargs": {
            "ratio": 0.5, "time_dist": "logit_normal", "t_mean": p_mean, "t_std": 0.8, "norm_p": 1.0,
            "norm_eps": 0.01, "v_weight": 1.0, "omega_max": 8.0, "omega_beta": beta, "interval_split": 0.5,
            "class_dropout": 0.1, "sample_omega": omega, "sample_t_min": t_min, "sample_t_max": t_max,
            "noise_scale": noise, "min_t": 0.05, "uniform_share": 0.1 if size.startswith("h") else 0.0,
            "aux_head": True, "perceptual_max_t": max_t,
            "perceptual_size": 224, "lpips_weight": 0.0, "convnext_weight": 0.0}},
        "training": {"batch_size": 1024, "grad_accum": 1, "steps": None, "epochs": 320, "optimizer": "muon",
                     "lr": 1e-3, "betas": [0.9, 0.95], "muon_momentum": 0.95, "eps": 1e-8,
                     "weight_decay": 0.0, "lr_decay_steps": None, "warmup_steps": 0, "warmup_epochs": None,
                     "grad_clip": None, "ema_decays": [], "ema_warmup": False, "ema_halflife_kimg": emas,
                     "ema_rampup": 0.05, "num_threads": 0, "parallel": "ddp", "checkpoint_every": 10000,
                     "keep_last": 3},
        "logging": {"log_every": 100, "sample_every": 10000, "sample_count": 64},
    }


def _describe(size: str) -> str:
    noise, _, _, _, omega, t_min, t_max, eval_ema = PMF_SIZES[size]
    res = 256 if size.endswith("16") else 512
    name = f"{size[0].upper()}/{size[1:]}"
    extra = "; 10% uniform t, r as the official tr_uniform" if size.startswith("h") else ""
    return (f"paper (pMF): ImageNet-{res} pixels, pMF-DiT-{name}, 320 ep, Muon 1e-3, EMA half-lives "
            f"500/1000/2000 kimg (sampled: {eval_ema:g}), noise x{noise:g}, "
            f"w={omega:g} [{t_min:g},{t_max:g}] "
            f"(1-NFE FID {PMF_FID[size]:.2f} with LPIPS 0.4 + ConvNeXt 0.1, whose weights files are yours: "
            f"0 here{extra})")


PMF_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    f"imagenet-pmf-{size}": (_describe(size), imagenet_pmf(size)) for size in PMF_SIZES
}
"""name -> (description, overrides), registered in `meanflow.training.presets.PRESETS`."""
