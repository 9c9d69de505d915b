"""Build the parts a run needs from its config: dataset, network, method (and the device).

The only place where config sections turn into objects; the loop receives the objects.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from meanflow.errors import UserError
from meanflow.training.config import Config


@dataclass
class Parts:
    """What a run is made of, built (and validated) before anything is written to disk."""

    data: Any
    """ImageData or PointData (meanflow.data)."""
    net: nn.Module
    """The network, unwrapped, on the CPU."""
    method: Any
    """The method object (meanflow.methods)."""
    shape: tuple[int, ...]
    """Shape of one sample."""
    classes: int
    """Classes conditioned on (0: unconditional)."""


def build_parts(cfg: Config) -> Parts:
    """Dataset, network (initialised from `training.seed`) and method of `cfg`."""
    data = build_data(cfg)
    shape = data_shape(data)
    classes = num_classes(cfg, data)
    method = build_method_from(cfg, classes)
    torch.manual_seed(cfg.training.seed)
    net = build_net(cfg, shape, classes, method)
    return Parts(data, net, method, shape, classes)


def resolve_device(name: str) -> torch.device:
    """`training.device` as a device: ``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device=cuda but no CUDA device is available")
    return torch.device(name)


def build_data(cfg: Config):
    """The training set: ImageData (x [N, C, H, W]) or PointData (x [N, D]) (see meanflow.data);
    `data.split=all` concatenates the splits the dataset has (x, y and pairs' noise row for row)."""
    from meanflow.data import DATASETS, build_dataset

    d = cfg.data
    opts = dict(d.options)
    if d.is_toy:
        opts.setdefault("n", d.num_points)
        opts.setdefault("seed", cfg.training.seed)
        return build_dataset(d.name, split="train", data_dir=d.data_dir, **opts)
    spec = DATASETS.get(d.name)
    splits = (spec.splits if spec is not None else ("train", "test")) if d.split == "all" else (d.split,)
    parts = [build_dataset(d.name, split=s, data_dir=d.data_dir, download=d.download, **opts) for s in splits]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    rows = {k: torch.cat([getattr(p, k) for p in parts]) for k in ("x", "y", "noise")
            if getattr(first, k, None) is not None}
    return type(first)(**{**{f: getattr(first, f) for f in first.__dataclass_fields__}, **rows})


def check_pairs(cfg: Config, data, method) -> None:
    """UserError unless data and method agree on coupled pairs: a method that declares `needs_pairs`
    needs data with a `noise` tensor, and pairs data cannot be augmented (the stored noise is coupled
    with the stored sample, not with an augmented one)."""
    has_pairs = getattr(data, "noise", None) is not None
    if getattr(method, "needs_pairs", False) and not has_pairs:
        raise UserError(f"method {cfg.method.name!r} trains on coupled (noise, sample) pairs, and dataset "
                        f"{cfg.data.name!r} has none: make them with `meanflow reflow-pairs RUN -n N --out "
                        "DIR` and train with data.name=pairs data.data_dir=DIR")
    if has_pairs and cfg.data.augment_p > 0:
        raise UserError("data.augment_p > 0 cannot be used with pairs data: an augmented sample is no longer "
                        "coupled with its stored noise (set data.augment_p=0)")


def data_shape(data) -> tuple[int, ...]:
    """Shape of one sample: (C, H, W) for images, (D,) for points."""
    return tuple(data.x.shape[1:])


def num_classes(cfg: Config, data) -> int:
    """Classes the network and method condition on: the dataset's when `data.use_labels`, else 0."""
    if not cfg.data.use_labels:
        return 0
    if data.num_classes == 0:
        raise UserError(f"data.use_labels is set but dataset {cfg.data.name!r} has no labels")
    return int(data.num_classes)


def build_augment(cfg: Config):
    """The augmentation pipe `data.augment` at `data.augment_p` (see meanflow.training.augment_pipes),
    or None when off."""
    if cfg.data.augment_p == 0:
        return None
    from meanflow.training.augment_pipes import build_augment_pipe

    return build_augment_pipe(cfg.data.augment, cfg.data.augment_p)


NET_INPUT_OPTIONS: dict[str, str] = {"guidance": "guidance_cond"}
"""Network keyword input a method may declare in `Method.net_inputs` -> the boolean option of the
network factories that makes a network take it (`guidance=[B, 3]`: `mlp`, `unet`, `unet-ddpmpp`,
`imf-dit` and its sizes)."""


def _net_input_options(cfg: Config, params, kw: dict, method) -> dict[str, bool]:
    """The options of `NET_INPUT_OPTIONS` the network gets: True for each input `method.net_inputs`
    declares (a UserError when the network has no such option, or the config turns it off), False
    for the others the factory takes (a UserError when the config turns one on: no input to take)."""
    from meanflow.networks.registry import NETWORKS

    wanted = tuple(getattr(method, "net_inputs", ()))
    out: dict[str, bool] = {}
    for key in wanted:
        option = NET_INPUT_OPTIONS.get(key)
        if option is None or option not in params:
            able = [n for n, f in NETWORKS.items()
                    if option is not None and option in inspect.signature(f).parameters]
            hint = f" (networks that do: {', '.join(able)})" if able else ""
            raise UserError(f"method {cfg.method.name!r} gives the network the input {key!r}, which network "
                            f"{cfg.network.name!r} cannot take{hint}")
        if option in kw and kw[option] is not True:
            raise UserError(f"network.kwargs.{option}={kw[option]!r}, but method {cfg.method.name!r} gives "
                            f"the network the input {key!r}: leave {option} unset (it is set automatically)")
        out[option] = True
    for key, option in NET_INPUT_OPTIONS.items():
        if key not in wanted and option in params:
            if kw.get(option, False) is not False:
                raise UserError(f"network.kwargs.{option}={kw[option]!r}, but method {cfg.method.name!r} "
                                f"gives the network no input {key!r} in this run: leave {option} unset (it "
                                "is set automatically when the method needs it)")
    return out


def _method_network_options(cfg: Config, params, kw: dict, method) -> dict:
    """The network options the method sets (`Method.network_options`, e.g. sCM's log-variance head
    ``{"log_variance": True}``): a UserError when the network has no such option or the config sets it
    to another value."""
    from meanflow.networks.registry import NETWORKS

    out = {}
    for option, value in dict(getattr(method, "network_options", {}) or {}).items():
        if option not in params:
            able = [n for n, f in NETWORKS.items() if option in inspect.signature(f).parameters]
            raise UserError(f"method {cfg.method.name!r} needs the network option {option}={value!r}, which "
                            f"network {cfg.network.name!r} does not have (networks that do: "
                            f"{', '.join(able)})")
        if option in kw and kw[option] != value:
            raise UserError(f"network.kwargs.{option}={kw[option]!r}, but method {cfg.method.name!r} needs "
                            f"{option}={value!r}: leave it unset (it is set automatically)")
        out[option] = value
    return out


def network_kwargs(cfg: Config, shape: tuple[int, ...], classes: int, method=None) -> dict:
    """`cfg.network.kwargs` completed from the data and the method: size, channels, dimension and
    class count are filled in where the factory takes them and the config does not say; with
    `data.augment_p > 0` the network gets `augment_dim` = the label length of the pipe `data.augment`
    (9 for 'edm', 6 for 'meanflow'; the augmentation labels are extra
    conditioning); each keyword input the method declares in `net_inputs` turns on the network option
    of `NET_INPUT_OPTIONS` (e.g. class-conditional `imf` -> `guidance_cond=True`). `method` is the
    built method (default: built from `cfg` with `classes`)."""
    from meanflow.networks.registry import NETWORKS

    name = cfg.network.name.lower()
    if name not in NETWORKS:
        raise UserError(f"unknown network {cfg.network.name!r}; choices: {', '.join(NETWORKS)}")
    params = inspect.signature(NETWORKS[name]).parameters
    kw = dict(cfg.network.kwargs)
    if method is None:
        method = build_method_from(cfg, classes)
    kw.update(_net_input_options(cfg, params, kw, method))
    kw.update(_method_network_options(cfg, params, kw, method))
    auto: dict[str, int] = {"num_classes": classes, "dim": math.prod(shape)}
    if len(shape) == 3:
        auto.update(in_channels=shape[0], input_size=shape[1], img_resolution=shape[1])
    if cfg.data.augment_p > 0:
        from meanflow.training.augment_pipes import AUGMENT_LABEL_DIMS

        dim = AUGMENT_LABEL_DIMS[cfg.data.augment]
        if "augment_dim" not in params:
            raise UserError(f"data.augment_p > 0 needs a network that takes augmentation labels "
                            f"(unet, unet-ddpmpp, unet-meanflow); {cfg.network.name!r} does not")
        if int(kw.get("augment_dim", dim)) != dim:
            raise UserError(f"data.augment_p > 0 gives {dim} augmentation labels (data.augment="
                            f"{cfg.data.augment}), but network.kwargs.augment_dim={kw['augment_dim']}")
        auto["augment_dim"] = dim
    for k, v in auto.items():
        if k in params and k not in kw:
            kw[k] = v
    if len(shape) == 3 and shape[1] != shape[2]:
        raise UserError(f"images must be square, got {shape[1]}x{shape[2]}")
    for key in ("input_size", "img_resolution"):
        if key in kw and len(shape) == 3 and int(kw[key]) != shape[1]:
            raise UserError(f"network.kwargs.{key}={kw[key]} but the images are {shape[1]}x{shape[2]}")
    return kw


def build_net(cfg: Config, shape: tuple[int, ...], classes: int, method=None) -> nn.Module:
    """The network of `cfg` for samples of `shape` and `classes` classes, with the options the
    (built) `method` needs (see `network_kwargs`)."""
    from meanflow.networks import build_network

    kw = network_kwargs(cfg, shape, classes, method)
    try:
        net = build_network(cfg.network.name, **kw)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build network {cfg.network.name!r}: {e}") from None
    check = getattr(method, "check_network", None)
    if check is not None:  # e.g. dmf needs a log-variance head: refused before any run folder exists
        check(net)
    return net


def build_method_from(cfg: Config, classes: int):
    """The method `cfg.method.name` with `cfg.method.kwargs`; `num_classes` (when the method takes it
    and the config does not set it) is the data's class count `classes`."""
    return cfg.method.build(classes)
