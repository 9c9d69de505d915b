"""Checkpoints in the format of the official MeanFlow PyTorch code (Gsunshine/py-meanflow), built from
its documented key names and shapes only (no official code here): a project U-Net's weights renamed.

    net.<name>, net_ema.<name>, net_ema1.<name>, net_ema2.<name>   four copies of the U-Net
        names as this project's SongUNet except out_norm / out_conv = dec.<R>x<R>_aux_norm / _aux_conv,
        and every up/down block's conv0 and skip carry a buffer resample_filter [1, 1, K, K]
        (f f^T / (sum f)^2) after their weight and bias
    num_updates                                                    optimizer steps (0-dim long)
    optimizer: Adam's state dict over net's parameters; lr_schedule; epoch; args: argparse.Namespace
"""

from __future__ import annotations

import argparse
import copy

import torch

from meanflow.networks import build_network

OFFICIAL_OPTIONS = dict(channel_mult_noise=2, embedding_order="sin-cos", resample_filter=(1, 3, 3, 1))
TINY_UNET = dict(img_resolution=8, in_channels=3, model_channels=8, channel_mult=(1, 2), num_blocks=1,
                 attn_resolutions=(4,), dropout=0.2, augment_dim=6, **OFFICIAL_OPTIONS)
DECAYS = (0.9999, 0.99995, 0.9996)


def tiny_official_unet(seed: int = 0, **kw):
    """A small project U-Net with the official options, weights perturbed away from the zero-ish init."""
    torch.manual_seed(seed)
    net = build_network("unet", **{**TINY_UNET, **kw})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def official_names(net) -> dict[str, torch.Tensor]:
    """The project network's state dict under the official names, with the filter buffers."""
    res = net.img_resolution
    taps = torch.tensor(net.resample_filter, dtype=torch.float32)
    filt = (torch.outer(taps, taps) / taps.sum().square())[None, None]
    resampling = {name for name, m in net.named_modules()
                  if getattr(m, "up", False) or getattr(m, "down", False)}
    out: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        name = key.replace("out_norm.", f"dec.{res}x{res}_aux_norm.")
        name = name.replace("out_conv.", f"dec.{res}x{res}_aux_conv.")
        out[name] = value.clone()
        block, _, leaf = key.rpartition(".")
        owner = block.rsplit(".", 1)[0]
        if owner in resampling and block.split(".")[-1] in ("conv0", "skip") and leaf == "bias":
            out[f"{block}.resample_filter"] = filt.clone()
    return out


def official_checkpoint(net=None, *, emas=None, epoch: int = 3, steps: int = 192, **args) -> dict:
    """The dict `torch.save` writes in the official train.py: raw weights `net`, EMA copies `emas`
    (default: `net` perturbed differently per decay), Adam state after one step, epoch and args."""
    net = net if net is not None else tiny_official_unet()
    if emas is None:
        emas = []
        for i in range(len(DECAYS)):
            e = copy.deepcopy(net)
            with torch.no_grad():
                for p in e.parameters():
                    p.add_(0.01 * (i + 1) * torch.randn_like(p))
            emas.append(e)
    model = {f"net.{k}": v for k, v in official_names(net).items()}
    for prefix, e in zip(("net_ema", "net_ema1", "net_ema2"), emas):
        model.update({f"{prefix}.{k}": v for k, v in official_names(e).items()})
    model["num_updates"] = torch.tensor(steps)
    trained = copy.deepcopy(net)  # the optimizer's step must not move the saved weights
    opt = torch.optim.Adam(trained.parameters(), lr=6e-4, betas=(0.9, 0.999))
    for p in trained.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    options = dict(arch="unet", dataset="cifar10", batch_size=128, world_size=8, epochs=16000, lr=6e-4,
                   optimizer_betas=[0.9, 0.999], warmup_epochs=200, dropout=0.2, ema_decay=DECAYS[0],
                   ema_decays=list(DECAYS[1:]), seed=0, ratio=0.75, tr_sampler="v1", P_mean_t=-0.6,
                   P_std_t=1.6, P_mean_r=-4.0, P_std_r=1.6, norm_p=0.75, norm_eps=1e-3, use_edm_aug=True,
                   compile=True, output_dir="./tmp", device="cuda")
    options.update(args)
    return {"model": model, "optimizer": opt.state_dict(),
            "lr_schedule": {"_milestones": [9600], "last_epoch": steps, "_schedulers": []},
            "epoch": epoch, "args": argparse.Namespace(**options)}
