"""The pMF presets reproduce the official configs (github.com/Lyy-iiis/pMF: main's configs/pMF_{B,L}_*
and default.py, hsdp's pMF_H_*) key by key, with the published numbers in their descriptions."""

from types import SimpleNamespace

import pytest
import torch

from meanflow.training.build import build_net
from meanflow.training.presets import PRESETS, resolve_config

# name: (network, resolution, noise_scale, P_mean, cfg_beta, perceptual_max_t, w, t_min, t_max, EMAs, FID)
OFFICIAL = {
    "imagenet-pmf-b16": ("pmf-dit-b/16", 256, 1.0, 0.8, 1.0, 0.8, 8.5, 0.1, 0.7, [2000, 500, 1000], "3.12"),
    "imagenet-pmf-l16": ("pmf-dit-l/16", 256, 1.0, 0.8, 2.0, 0.8, 7.0, 0.2, 0.7, [1000, 500, 2000], "2.52"),
    "imagenet-pmf-h16": ("pmf-dit-h/16", 256, 2.0, 0.0, 1.0, 0.6, 7.0, 0.2, 0.6, [1000, 500, 2000], "2.22"),
    "imagenet-pmf-b32": ("pmf-dit-b/32", 512, 2.0, 0.8, 1.0, 0.8, 6.5, 0.1, 0.7, [2000, 500, 1000], "3.70"),
    "imagenet-pmf-l32": ("pmf-dit-l/32", 512, 4.0, 0.0, 1.0, 0.6, 7.5, 0.2, 0.6, [2000, 500, 1000], "2.75"),
    "imagenet-pmf-h32": ("pmf-dit-h/32", 512, 4.0, 0.0, 1.0, 0.6, 5.5, 0.1, 0.6, [500, 1000, 2000], "2.48"),
}
DEPTH_WIDTH = {"b": (16, 768), "l": (32, 1024), "h": (48, 1280)}  # pmfDiT.py:413-472


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_pmf_presets_key_by_key(name):
    net, res, noise, p_mean, beta, max_t, omega, t_min, t_max, emas, fid = OFFICIAL[name]
    c = resolve_config(name)
    d, t, m = c.data, c.training, SimpleNamespace(**c.method.kwargs)
    # data: ImageNet pixels, ADM centre crop, no flips (default.py:23 use_flip False), labels
    assert (d.name, d.split, d.use_labels, d.augment_p) == ("imagenet_pixels", "train", True, 0.0)
    assert d.options == {"resolution": res, "flip": False}
    assert c.network.name == net and c.network.kwargs == {"input_size": res, "in_channels": 3}
    # optimisation (pMF_*_config.yml training:, trainstate_util.py:74-77, ema_util.py:9-16)
    assert (t.batch_size, t.grad_accum, t.epochs, t.steps) == (1024, 1, 320, None)
    assert (t.optimizer, t.lr, t.betas, t.muon_momentum, t.eps, t.weight_decay) == \
        ("muon", 1e-3, (0.9, 0.95), 0.95, 1e-8, 0.0)
    assert (t.warmup_steps, t.warmup_epochs, t.lr_decay_steps, t.grad_clip) == (0, None, None, None)
    assert (t.ema_decays, t.ema_halflife_kimg, t.ema_rampup) == ([], emas, 0.05)
    assert t.ema_keys[0] == f"{emas[0]}kimg"  # the EMA the released checkpoint is evaluated with
    assert t.total_steps(1_281_167) == 400_365  # 320 epochs of the ImageNet train set at 1024
    # method (pmf.py defaults, default.py, the config's model: and sampling:)
    assert c.method.name == "pmf"
    assert (m.ratio, m.time_dist, m.t_mean, m.t_std) == (0.5, "logit_normal", p_mean, 0.8)
    assert (m.norm_p, m.norm_eps, m.v_weight, m.class_dropout) == (1.0, 0.01, 1.0, 0.1)
    assert (m.omega_max, m.omega_beta, m.interval_split) == (8.0, beta, 0.5)
    assert (m.noise_scale, m.min_t, m.aux_head, m.perceptual_max_t, m.perceptual_size) == \
        (noise, 0.05, True, max_t, 224)
    assert (m.sample_omega, m.sample_t_min, m.sample_t_max) == (omega, t_min, t_max)
    # hsdp's pMF_H_*_config.yml: tr_uniform True (10% uniform t, r; pmf.py:182-203); B and L: off
    assert m.uniform_share == (0.1 if net.startswith("pmf-dit-h") else 0.0)
    # the perceptual weights are the user's files: 0 here (official 0.4 LPIPS, 0.1 ConvNeXt)
    assert (m.lpips_weight, m.convnext_weight, m.lpips_weights, m.convnext_weights) == (0.0, 0.0, None, None)
    description = PRESETS[name].description
    assert f"FID {fid}" in description and "LPIPS 0.4 + ConvNeXt 0.1" in description
    assert "0 here" in description
    assert f"ImageNet-{res} pixels" in description


@pytest.mark.parametrize("name", ["imagenet-pmf-b16", "imagenet-pmf-h32"])
def test_pmf_preset_network(name):
    net_name, res = OFFICIAL[name][:2]
    c = resolve_config(name)
    with torch.device("meta"):
        net = build_net(c, (3, res, res), 1000)
    depth, width = DEPTH_WIDTH[net_name[8]]
    assert (len(net.blocks), net.aux_head_depth, net.pos_embed.shape[-1]) == (depth, 8, width)
    assert net.patch_size == int(net_name.split("/")[1]) and net.grid == 16
    assert net.guidance_cond  # the method's guidance input turns it on


def test_perceptual_losses_can_be_turned_on_with_files(tmp_path):
    """The published weights need the user's files: a positive weight without one is a one-line error."""
    from meanflow.errors import UserError

    with pytest.raises(UserError, match="lpips_weight=0.4 needs lpips_weights"):
        resolve_config("imagenet-pmf-b16", overrides=["method.kwargs.lpips_weight=0.4"])
