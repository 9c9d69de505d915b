"""Load a trained run for generation or as a teacher: the method, the network (chosen weights) and
the config of a run folder (newest checkpoint), a checkpoint file, an export folder (`meanflow
export`) or an export on the Hugging Face Hub (`hf://ORG/NAME[@REVISION]`).

    method, net, cfg = load_generator("runs/00000-digits-meanflow", ema=None)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from meanflow.errors import UserError
from meanflow.utils.files import reason


def parse_ema(ema: Any) -> float | None | str:
    """None -> 'default' (the first EMA of the run); 'raw'/'none'/0 -> raw weights; a half-life name
    such as '1000kimg' -> that name (canonical form); else a decay (float)."""
    from meanflow.training.ema import halflife_name, parse_halflife

    if ema is None or ema == "default":
        return "default"
    if isinstance(ema, str) and ema.lower() in ("raw", "none", "off"):
        return None
    if isinstance(ema, str) and parse_halflife(ema) is not None:
        return halflife_name(parse_halflife(ema))
    try:
        value = float(ema)
    except (TypeError, ValueError):
        raise UserError(f"--ema must be a decay such as 0.9999, a half-life such as 1000kimg, or 'raw', "
                        f"got {ema!r}") from None
    return None if value == 0.0 else value


def weights_prefix(ckpt, ema: Any) -> str:
    """The checkpoint group of the weights `ema` names (see `parse_ema`): 'model/' or 'ema/<key>/';
    an EMA the checkpoint does not hold is a UserError listing those it has."""
    from meanflow.training.checkpoint import ema_prefix

    choice = parse_ema(ema)
    if choice == "default":
        choice = ckpt.ema_decays[0] if ckpt.ema_decays else None
    if choice is None:
        return "model/"
    if choice not in ckpt.ema_decays:
        ckpt.ema(choice)  # the UserError listing the EMAs the checkpoint has
    return ema_prefix(choice)


def ema_of_prefix(prefix: str) -> float | str | None:
    """The EMA key of a weights group ('model/' -> None, 'ema/0.9999/' -> 0.9999, 'ema/500kimg/' ->
    '500kimg')."""
    if prefix == "model/":
        return None
    text = prefix.split("/")[1]
    try:
        return float(text)
    except ValueError:
        return text


def load_generator(path: str | Path, ema: Any = None, device: str | torch.device = "cpu"):
    """Load a trained generator from a run folder (newest checkpoint), a checkpoint file, an export
    folder or an `hf://` export.

    Args:
        path: run folder or `.safetensors` checkpoint written by `meanflow train`; a folder written by
            `meanflow export`; or `hf://ORG/NAME[@REVISION]`, an export on the Hugging Face Hub
            (downloaded with `huggingface_hub.snapshot_download`, only the export's files).
        ema: None (the run's first EMA, raw weights if it has none), a decay (e.g. 0.9999), a
            half-life name (e.g. '1000kimg', `training.ema_halflife_kimg`), or 'raw' / 0 for the raw
            weights. An export holds one set: None, or that set's name.
        device: where the network is put.

    Returns:
        (method, net, cfg): the method object, the network in eval mode (with `meanflow_shape`,
        `meanflow_num_classes`, `meanflow_is_latent` and `meanflow_vae` attributes, and `meanflow_export`,
        the export's config.json, for an export), and the run's `Config`.
    """
    from meanflow.export.layout import is_export, is_hub_path
    from meanflow.training.build import build_method_from, build_net
    from meanflow.training.checkpoint import Checkpoint
    from meanflow.training.config_io import config_from_dict

    if is_hub_path(path) or is_export(path):
        from meanflow.export.hub import download_export
        from meanflow.export.read import load_export

        return load_export(download_export(path) if is_hub_path(path) else path, ema=ema, device=device)
    ckpt = Checkpoint(path)
    cfg = config_from_dict(ckpt.config)
    try:
        shape = tuple(int(d) for d in ckpt.state["data_shape"])
        classes = int(ckpt.state["num_classes"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt.path} has no valid data_shape / num_classes in its state "
                        f"metadata ({reason(e)})") from e
    method = build_method_from(cfg, classes)
    net = build_net(cfg, shape, classes, method)
    ckpt.load_into(net, weights_prefix(ckpt, ema))
    # the VAE record of a latent-cache run (None otherwise)
    finish_generator(net, shape, classes, bool(ckpt.state.get("is_latent", False)), ckpt.state.get("vae"),
                     device, f"checkpoint {ckpt.path}")
    return method, net, cfg


def finish_generator(net, shape: tuple[int, ...], classes: int, is_latent: bool, vae: dict | None,
                     device: str | torch.device, what: str) -> None:
    """Refuse non-finite weights (a UserError naming `what`), put `net` on `device` in eval mode without
    gradients, and record `meanflow_shape`, `meanflow_num_classes`, `meanflow_is_latent`, `meanflow_vae`."""
    bad = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{what} holds non-finite weights ({bad[0]}"
                        f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): it cannot produce samples")
    net.to(device).eval().requires_grad_(False)
    net.meanflow_shape = shape
    net.meanflow_num_classes = classes
    net.meanflow_is_latent = is_latent
    net.meanflow_vae = vae
