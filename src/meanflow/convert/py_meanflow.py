"""Checkpoints of the official MeanFlow PyTorch code (Gsunshine/py-meanflow) -> a meanflow checkpoint.

Its ``train.py`` saves ``checkpoint-*.pth`` with ``torch.save`` as a dict::

    model         the MeanFlow module's state dict: "num_updates" (optimizer steps) and four copies of
                  an EDM SongUNet: "net.*" (raw weights), "net_ema.*" (decay args.ema_decay, 0.9999)
                  and "net_ema<i>.*" (decay args.ema_decays[i - 1]: 0.99995, 0.9996)
    optimizer     Adam's state dict over the parameters of "net" in order
    lr_schedule   the warmup schedule's state (not needed: the loop computes the lr from the step)
    epoch         the last finished epoch (0-based)
    args          argparse.Namespace of the training options

The U-Net is this project's :class:`~meanflow.networks.unet.SongUNet` with
``channel_mult_noise=2, embedding_order="sin-cos", resample_filter=[1, 3, 3, 1]`` (and
``augment_dim=6`` when trained with its augmentation, ``--use_edm_aug``); its sizes are read from the
weights' shapes. Names are the same except the output layers (``dec.<R>x<R>_aux_norm`` /
``_aux_conv`` -> ``out_norm`` / ``out_conv``); the up/down-sampling convolutions' ``resample_filter``
buffers are checked and dropped (the filter becomes the ``resample_filter`` option). The config is
the ``cifar10`` (``--tr_sampler v0``) or ``cifar10-v1`` preset with the file's own options.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from meanflow.errors import UserError

# The options of the official train_arg_parser this converter reads, with that parser's defaults
# (used when a file has no `args`, or an older one lacks a field).
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "arch": "unet", "dataset": "cifar10", "batch_size": 64, "world_size": 1, "epochs": 4000, "lr": 6e-4,
    "optimizer_betas": [0.9, 0.999], "warmup_epochs": 200, "dropout": 0.2, "ema_decay": 0.9999,
    "ema_decays": [0.99995, 0.9996], "seed": 0, "ratio": 0.75, "tr_sampler": "v1", "P_mean_t": -0.6,
    "P_std_t": 1.6, "P_mean_r": -4.0, "P_std_r": 1.6, "norm_p": 0.75, "norm_eps": 1e-3,
}
CIFAR10_TRAIN = 50_000
"""Images the official code trains on (CIFAR-10's training split)."""
OFFICIAL_AUGMENT_DIM = 6
"""Label length of the official augmentation pipe (`data.augment = "meanflow"`)."""

_OUT = re.compile(r"^dec\.(\d+)x\1_aux_(norm|conv)\.(.+)$")


@dataclass
class Converted:
    """A converted checkpoint: what :func:`meanflow.training.checkpoint.save_checkpoint` writes."""

    model: dict[str, Tensor]
    """Raw weights, the project network's state dict."""
    ema: dict[float, dict[str, Tensor]]
    """Decay -> EMA weights, in the file's order (args.ema_decay first)."""
    optimizer: dict | None
    """Adam's state dict over the project network's parameters, or None when the file has none."""
    config: dict
    """The resolved project config (``config_to_dict``)."""
    state: dict
    """Checkpoint state: step, sampler position, data shape, ..."""


def official_args(obj: dict, source: str) -> dict[str, Any]:
    """The file's training options (a Namespace in ``obj["args"]``) over :data:`OFFICIAL_DEFAULTS`."""
    args = obj.get("args")
    if args is None:
        return dict(OFFICIAL_DEFAULTS)
    if not isinstance(args, argparse.Namespace):
        raise UserError(f"{source}: 'args' is a {type(args).__name__}, not the argparse.Namespace of the "
                        "official training script")
    return {**OFFICIAL_DEFAULTS, **vars(args)}


def _model_dict(obj: Any, source: str) -> dict[str, Tensor]:
    model = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(model, dict) or not model:
        raise UserError(f"{source} is not a py-meanflow checkpoint: it has no 'model' state dict")
    bad = next((k for k, v in model.items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None:
        raise UserError(f"{source}: model entry {bad!r} is not a tensor")
    return model


def _group(model: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in model.items() if k.startswith(prefix + ".")}


def project_name(key: str) -> str:
    """Official SongUNet parameter name -> this project's (only the output layers differ)."""
    m = _OUT.match(key)
    return f"out_{m.group(2)}.{m.group(3)}" if m else key


def _filter_taps(buf: Tensor, key: str, source: str) -> tuple[int, ...]:
    """The 1-D filter ``f`` of a stored ``f f^T / (sum f)^2`` buffer, as small integers (EDM's filters)."""
    k = buf.double().reshape(buf.shape[-2], buf.shape[-1]) if buf.dim() >= 2 else None
    if k is None or k.shape[0] != k.shape[1] or k.shape[0] % 2 or float(k.min()) <= 0:
        raise UserError(f"{source}: {key} is not an EDM resampling filter (shape {list(buf.shape)})")
    f = k.sum(dim=1)
    taps = f / f.min()
    ints = tuple(int(round(float(v))) for v in taps)
    rebuilt = torch.tensor(ints, dtype=torch.float64)
    if not torch.allclose(torch.outer(rebuilt, rebuilt) / rebuilt.sum() ** 2, k, atol=1e-6):
        raise UserError(f"{source}: {key} is not a separable filter of small integer taps")
    return ints


def network_options(net: dict[str, Tensor], args: dict[str, Any], source: str) -> dict[str, Any]:
    """SongUNet kwargs of the official U-Net whose weights are ``net`` (the ``net.*`` group).

    Sizes come from shapes: ``enc.<R>x<R>_conv.weight [C, C_in, 3, 3]`` gives the resolution, input and
    base channels; the ``enc.<r>x<r>_block<i>`` blocks the levels, multipliers, blocks per level and
    attention resolutions; ``map_layer0.weight [E, 2 n]`` the embedding width and ``n`` time features;
    ``map_augment.weight [2 n, A]`` the augmentation labels; a ``resample_filter`` buffer the filter.
    """
    def need(key: str) -> Tensor:
        if key not in net:
            raise UserError(f"{source} holds another architecture than py-meanflow's U-Net ('unet'): "
                            f"no net.{key}")
        return net[key]

    if str(args.get("arch", "unet")) != "unet":
        raise UserError(f"{source} holds another architecture ({args['arch']!r}); only py-meanflow's 'unet' "
                        "(EDM's SongUNet) can be converted")
    if any(k.startswith("map_label.") for k in net):
        raise UserError(f"{source}: a class-conditional U-Net (map_label); the official code trains "
                        "unconditional ones only and so does this converter")
    first = [k for k in net if re.match(r"^enc\.\d+x\d+_conv\.weight$", k)]
    if len(first) != 1:
        raise UserError(f"{source} holds another architecture than py-meanflow's U-Net ('unet'): "
                        "no single input convolution enc.<R>x<R>_conv")
    res = int(first[0].split(".")[1].split("x")[0])
    conv = need(first[0])
    mc, cin = int(conv.shape[0]), int(conv.shape[1])
    levels, mults, attn, blocks = [], [], [], []
    r = res
    while f"enc.{r}x{r}_block0.conv0.weight" in net:
        n = 0
        while f"enc.{r}x{r}_block{n}.conv0.weight" in net:
            n += 1
        levels.append(r)
        blocks.append(n)
        mults.append(int(net[f"enc.{r}x{r}_block0.conv0.weight"].shape[0]) // mc)
        if f"enc.{r}x{r}_block0.qkv.weight" in net:
            attn.append(r)
        r //= 2
    if not levels or len(set(blocks)) != 1:
        raise UserError(f"{source} holds another architecture than py-meanflow's U-Net ('unet'): "
                        "no encoder blocks enc.<R>x<R>_block<i> of one count per level")
    emb = need("map_layer0.weight")
    feat = int(emb.shape[1])
    if feat % (2 * mc):
        raise UserError(f"{source}: map_layer0 takes {feat} inputs, not 2 x a multiple of {mc} time features")
    filt = [k for k in net if k.endswith(".resample_filter")]
    taps = _filter_taps(net[filt[0]], "net." + filt[0], source) if filt else (1, 1)
    out = need(f"dec.{res}x{res}_aux_conv.weight")
    kw: dict[str, Any] = {
        "img_resolution": res, "in_channels": cin, "model_channels": mc, "channel_mult": mults,
        "num_blocks": blocks[0], "attn_resolutions": attn, "dropout": float(args["dropout"]),
        "channel_mult_emb": int(emb.shape[0]) // mc, "channel_mult_noise": feat // (2 * mc),
        "embedding_order": "sin-cos", "resample_filter": list(taps),
        "augment_dim": int(net["map_augment.weight"].shape[1]) if "map_augment.weight" in net else 0,
    }
    if int(out.shape[0]) != cin:
        kw["out_channels"] = int(out.shape[0])
    return kw


def project_weights(net: dict[str, Tensor], ref: dict[str, Tensor], taps: tuple[int, ...], what: str,
                    source: str) -> dict[str, Tensor]:
    """Rename one official U-Net state dict onto this project's names (``ref``: the project network's
    state dict), checking every filter buffer, name and shape."""
    out: dict[str, Tensor] = {}
    want = torch.tensor(taps, dtype=torch.float64)
    want = torch.outer(want, want) / want.sum() ** 2
    for key, value in net.items():
        if key.endswith(".resample_filter"):
            if tuple(value.shape[-2:]) != tuple(want.shape) or not torch.allclose(
                    value.double().reshape(want.shape), want, atol=1e-6):
                raise UserError(f"{source}: {what}.{key} differs from the network's other resampling filters")
            continue
        out[project_name(key)] = value
    missing = sorted(set(ref) - set(out))
    extra = sorted(set(out) - set(ref))
    if missing or extra:
        name = f"missing {what}.{missing[0]}" if missing else f"unexpected {what}.{extra[0]}"
        more = len(missing) + len(extra) - 1
        raise UserError(f"{source} holds another architecture than the U-Net its shapes describe: {name}"
                        + (f" (and {more} more)" if more else ""))
    for k, v in ref.items():
        if tuple(out[k].shape) != tuple(v.shape) or not out[k].is_floating_point():
            raise UserError(f"{source}: {what}.{k} has shape {list(out[k].shape)} ({out[k].dtype}), the "
                            f"U-Net its other weights describe needs {list(v.shape)}")
    return {k: out[k].detach().clone().contiguous() for k in ref}


def ema_groups(model: dict[str, Tensor], args: dict[str, Any], source: str) -> list[tuple[str, float]]:
    """``[(prefix, decay)]`` of the EMA copies: ``net_ema`` with args.ema_decay, ``net_ema<i>`` with
    args.ema_decays[i - 1]; a copy the options name but the file lacks (or the reverse) is a UserError."""
    decays = [float(args["ema_decay"]), *(float(d) for d in args["ema_decays"])]
    prefixes = ["net_ema", *(f"net_ema{i + 1}" for i in range(len(decays) - 1))]
    present = {k.split(".", 1)[0] for k in model if k.startswith("net_ema")}
    for p, d in zip(prefixes, decays):
        if p not in present:
            raise UserError(f"{source} has no EMA weights {p}.* (decay {d!r}): the official checkpoint holds "
                            f"net, {', '.join(prefixes)}")
    extra = sorted(present - set(prefixes))
    if extra:
        raise UserError(f"{source} has EMA weights {extra[0]}.* whose decay its args do not give")
    if len(set(decays)) != len(decays):
        raise UserError(f"{source}: two EMA copies share a decay ({decays})")
    return list(zip(prefixes, decays))


def project_optimizer(opt: Any, official_names: list[str], ours: list[str]) -> dict | None:
    """Adam's state dict re-indexed onto this project's parameter order, or None when ``opt`` is not
    a one-group state dict over exactly the U-Net's parameters (the weights still convert)."""
    if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list):
        return None
    groups, state = opt["param_groups"], opt.get("state", {})
    if len(groups) != 1 or len(groups[0].get("params", [])) != len(official_names):
        return None
    index = {name: i for i, name in enumerate(ours)}
    remap = {old: index[project_name(official_names[pos])] for pos, old in enumerate(groups[0]["params"])}
    new_state = {}
    for old, st in state.items():
        if old not in remap or not isinstance(st, dict):
            return None
        new_state[remap[old]] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
    group = {k: (list(v) if isinstance(v, tuple) else v) for k, v in groups[0].items() if k != "params"}
    if not all(isinstance(v, (int, float, bool, str, list, type(None))) for v in group.values()):
        return None
    return {"state": new_state, "param_groups": [{**group, "params": list(range(len(ours)))}]}


def build_config(args: dict[str, Any], net_kwargs: dict[str, Any], source: str) -> dict:
    """The project config of the official run: the ``cifar10`` / ``cifar10-v1`` preset with the file's
    options (method, batch, lr, betas, epochs, warmup, EMA decays, seed, dropout, network sizes)."""
    from meanflow.training.config_io import config_from_dict, config_to_dict, merge
    from meanflow.training.presets import preset_dict

    if str(args["dataset"]) != "cifar10":
        raise UserError(f"{source} was trained on {args['dataset']!r}; only CIFAR-10 checkpoints are "
                        "converted")
    sampler = str(args["tr_sampler"])
    if sampler not in ("v0", "v1"):
        raise UserError(f"{source}: unknown (t, r) sampler tr_sampler={sampler!r} (the official code has "
                        "v0, v1)")
    name = "cifar10" if sampler == "v0" else "cifar10-v1"
    data = preset_dict(name)
    aug = net_kwargs["augment_dim"]
    if aug not in (0, OFFICIAL_AUGMENT_DIM):
        raise UserError(f"{source}: the U-Net takes {aug} augmentation labels; the official pipe gives "
                        f"{OFFICIAL_AUGMENT_DIM}")
    method = dict(data["method"]["kwargs"])
    method.update(ratio=float(args["ratio"]), time_dist="logit_normal", t_mean=float(args["P_mean_t"]),
                  t_std=float(args["P_std_t"]), r_mean=float(args["P_mean_r"]), r_std=float(args["P_std_r"]),
                  time_pairing="sort" if sampler == "v0" else "min", norm_p=float(args["norm_p"]),
                  norm_eps=float(args["norm_eps"]))
    over = {
        "data": {"augment_p": 0.12 if aug else 0.0, "augment": "meanflow"},
        "network": {"name": "unet", "kwargs": net_kwargs},
        "method": {"name": "meanflow", "kwargs": method},
        "training": {"batch_size": int(args["batch_size"]) * int(args.get("world_size") or 1),
                     "lr": float(args["lr"]), "betas": [float(b) for b in args["optimizer_betas"]],
                     "epochs": int(args["epochs"]), "steps": None,
                     "warmup_epochs": int(args["warmup_epochs"]),
                     "ema_decays": [float(args["ema_decay"]), *(float(d) for d in args["ema_decays"])],
                     "seed": int(args["seed"])},
    }
    return config_to_dict(config_from_dict(merge(data, over)))


def convert_py_meanflow(obj: Any, source: str = "checkpoint") -> Converted:
    """Convert the object of an official ``checkpoint-*.pth`` (see the module docstring).

    Args:
        obj: what :func:`meanflow.convert.torch_file.read_torch_checkpoint` returned.
        source: the file's name, for messages.

    Returns:
        The project's weights, EMAs (decay -> state dict), optimizer state, config and state.
    """
    from meanflow.networks import build_network

    if not isinstance(obj, dict):
        raise UserError(f"{source} is not a py-meanflow checkpoint (a {type(obj).__name__}, not a dict)")
    model = _model_dict(obj, source)
    args = official_args(obj, source)
    raw = _group(model, "net")
    if not raw:
        raise UserError(f"{source} is not a py-meanflow checkpoint: its model has no net.* weights")
    kw = network_options(raw, args, source)
    cfg = build_config(args, kw, source)
    with torch.device("meta"):
        ref = build_network("unet", **kw).state_dict()
    taps = tuple(kw["resample_filter"])
    weights = project_weights(raw, ref, taps, "net", source)
    ema = {d: project_weights(_group(model, p), ref, taps, p, source)
           for p, d in ema_groups(model, args, source)}

    with torch.device("meta"):
        ours = [n for n, _ in build_network("unet", **kw).named_parameters()]
    official_names = [k for k in raw if not k.endswith(".resample_filter")]
    optimizer = project_optimizer(obj.get("optimizer"), official_names, ours)

    batch = cfg["training"]["batch_size"]
    per_epoch = max(1, CIFAR10_TRAIN // batch)
    epoch = obj.get("epoch")
    if "num_updates" in model:
        step = int(model["num_updates"])
    elif isinstance(epoch, int):
        step = (epoch + 1) * per_epoch
    else:
        step = 0
    total = max(1, math.ceil(cfg["training"]["epochs"] * CIFAR10_TRAIN / batch))
    seed = cfg["training"]["seed"]
    state = {
        "step": step, "seed": seed, "world_size": 1, "total_steps": total,
        "sampler": {"epoch": step // per_epoch, "position": (step % per_epoch) * batch, "seed": seed,
                    "n": CIFAR10_TRAIN},
        "data_shape": [kw["in_channels"], kw["img_resolution"], kw["img_resolution"]], "num_classes": 0,
        "is_latent": False,
        "converted_from": {"format": "py-meanflow", "file": source,
                           "epoch": epoch if isinstance(epoch, int) else None},
    }
    return Converted(model=weights, ema=ema, optimizer=optimizer, config=cfg, state=state)
