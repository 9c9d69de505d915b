"""Load an export folder as a generator: ``(method, net, cfg)``, like a run folder.

The network is built from `config.json` alone (method name and kwargs, network name and its resolved
kwargs) and gets the weights of `model.safetensors`, read with safetensors (never unpickled) and
checked name by name and shape by shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from meanflow.errors import UserError
from meanflow.export.layout import VAE_DIR, WEIGHTS, read_config, weights_label
from meanflow.utils.files import reason


def _check_ema(folder: Path, config: dict, ema: Any) -> None:
    """UserError unless `ema` (None / 'default' / a decay / 'raw') names the one set the export holds."""
    from meanflow.training.load import parse_ema

    choice = parse_ema(ema)
    if choice == "default":
        return
    held = config.get("weights", {}).get("ema")
    held = held if held is None or isinstance(held, str) else float(held)
    if choice != held:
        asked = "raw weights" if choice is None else f"EMA {choice}"
        raise UserError(f"export {folder} holds one set of weights ({weights_label(config)}), not the "
                        f"{asked} asked for with --ema")


def _weights(folder: Path, ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`model.safetensors` checked against the network's state dict `ref` (names, shapes, kinds)."""
    path = folder / WEIGHTS
    if not path.is_file():
        raise UserError(f"export {folder} is incomplete: no {WEIGHTS}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {reason(e)}") from None
    missing, extra = sorted(set(ref) - set(tensors)), sorted(set(tensors) - set(ref))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise UserError(f"{path} does not match the network of its config.json: {what}")
    for k, v in ref.items():
        if tensors[k].shape != v.shape:
            raise UserError(f"{path} does not match its config.json: {k} has shape {list(tensors[k].shape)}, "
                            f"the network expects {list(v.shape)}")
        if v.is_floating_point() and not tensors[k].is_floating_point():
            raise UserError(f"{path}: {k} has dtype {tensors[k].dtype}, expected floating point")
    return {k: tensors[k].to(v.dtype) for k, v in ref.items()}


def load_export(folder: str | Path, ema: Any = None, device: str | torch.device = "cpu"):
    """Load export `folder` (see `meanflow.export.layout`).

    Args:
        folder: the export folder.
        ema: None (the weights it holds), or the decay / 'raw' they must be (a UserError otherwise).
        device: where the network is put.

    Returns:
        (method, net, cfg) as `meanflow.load_generator`: the network in eval mode with `meanflow_shape`,
        `meanflow_num_classes`, `meanflow_is_latent`, `meanflow_vae` (its `name` is the export's `vae/`
        folder when the export holds the VAE) and `meanflow_export` (the `config.json` dict).
    """
    from meanflow.networks import build_network
    from meanflow.training.config import MethodConfig
    from meanflow.training.config_io import config_from_dict
    from meanflow.training.load import finish_generator

    folder = Path(folder)
    config = read_config(folder)
    _check_ema(folder, config, ema)
    shape = tuple(int(d) for d in config["data"]["shape"])
    classes = int(config["data"]["num_classes"])
    method = MethodConfig(str(config["method"]["name"]), dict(config["method"]["kwargs"])).build(classes)
    name, kwargs = str(config["network"]["name"]), dict(config["network"]["kwargs"])
    try:
        net = build_network(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build network {name!r} of {folder}: {e}") from None
    check = getattr(method, "check_network", None)
    if check is not None:
        check(net)
    net.load_state_dict(_weights(folder, net.state_dict()))
    cfg = config_from_dict(dict(config["training_config"]))
    vae = config.get("vae")
    if vae is not None and (folder / VAE_DIR / "config.json").is_file():
        vae = {**vae, "name": str(folder / VAE_DIR)}
    latent = bool(config["data"].get("is_latent", False))
    finish_generator(net, shape, classes, latent, vae, device, str(folder / WEIGHTS))
    net.meanflow_export = config
    return method, net, cfg
