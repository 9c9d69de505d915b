"""Generation from trained models: load a generator, draw seeded samples, quantise to uint8.

Noise is drawn in fixed blocks of `NOISE_BLOCK` samples, block b from a generator seeded with
(seed, b), so sample i is the same image whatever the batch size, world size or device.
Class labels of a conditional model are `i % num_classes` (balanced) unless one class is asked for.

    method, net, cfg = load_generator("runs/00000-digits-meanflow", ema=None)
    images = generate_uint8(method, net, 1000, steps=1, seed=0)     # uint8 [1000, H, W, C]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from meanflow.errors import UserError
from meanflow.utils.images import to_uint8

NOISE_BLOCK = 1024


def _block_seed(seed: int, block: int) -> int:
    return int(np.random.SeedSequence([seed, block, 0x5A3]).generate_state(1, np.uint64)[0] >> 1)


def noise_for(start: int, stop: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gaussian noise of samples [start, stop): float32 [stop - start, *shape] on the CPU."""
    out = []
    for b in range(start // NOISE_BLOCK, math.ceil(stop / NOISE_BLOCK)):
        g = torch.Generator().manual_seed(_block_seed(seed, b))
        block = torch.randn((NOISE_BLOCK, *shape), generator=g)
        lo, hi = max(start - b * NOISE_BLOCK, 0), min(stop - b * NOISE_BLOCK, NOISE_BLOCK)
        out.append(block[lo:hi])
    return torch.cat(out) if out else torch.empty((0, *shape))


def labels_for(start: int, stop: int, num_classes: int, class_label: int | None) -> torch.Tensor | None:
    """Class ids of samples [start, stop): `class_label`, or i % num_classes; None if unconditional."""
    if num_classes == 0:
        if class_label is not None:
            raise UserError("this model is unconditional: --class cannot be used")
        return None
    if class_label is not None:
        if not 0 <= class_label < num_classes:
            raise UserError(f"class {class_label} is outside [0, {num_classes - 1}]")
        return torch.full((stop - start,), class_label, dtype=torch.long)
    return torch.arange(start, stop, dtype=torch.long) % num_classes


def model_info(net: nn.Module) -> tuple[tuple[int, ...], int]:
    """(sample shape, num_classes) recorded on a network by `load_generator` or the training loop."""
    shape = getattr(net, "meanflow_shape", None)
    if shape is None:
        raise UserError("network has no recorded sample shape (load it with load_generator)")
    return tuple(shape), int(getattr(net, "meanflow_num_classes", 0))


def generation_kwargs(net: nn.Module, n: int, device: str | torch.device = "cpu") -> dict | None:
    """Extra network inputs for generating `n` samples: zero augmentation labels `[n, augment_dim]`
    for a network conditioned on them, else None."""
    dim = int(getattr(getattr(net, "module", net), "augment_dim", 0) or 0)
    return {"augment_labels": torch.zeros(n, dim, device=device)} if dim > 0 else None


@torch.no_grad()
def generate(method, net: nn.Module, start: int, stop: int, *, steps: int = 1, seed: int = 0,
             batch_size: int = 256, class_label: int | None = None, device: str | torch.device = "cpu",
             shape: tuple[int, ...] | None = None, num_classes: int | None = None) -> torch.Tensor:
    """Samples [start, stop) as float32 [stop - start, *shape] on the CPU (images in [-1, 1]).

    Calls `method.sample(net, noise, y, steps=steps)` in batches of `batch_size`. A network trained
    with augmentation labels (`augment_dim > 0`) gets zero labels: no augmentation, as in EDM.
    """
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if shape is None or num_classes is None:
        s, c = model_info(net)
        shape = s if shape is None else shape
        num_classes = c if num_classes is None else num_classes
    outs = []
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        e = noise_for(lo, hi, shape, seed).to(device)
        y = labels_for(lo, hi, num_classes, class_label)
        y = None if y is None else y.to(device)
        kw = generation_kwargs(net, hi - lo, device)
        extra = {} if kw is None else {"net_kwargs": kw}
        outs.append(method.sample(net, e, y, steps=steps, **extra).float().cpu())
    return torch.cat(outs) if outs else torch.empty((0, *shape))


def generate_uint8(method, net: nn.Module, n: int, steps: int = 1, seed: int = 0, batch_size: int = 256,
                   class_label: int | None = None, device: str | torch.device = "cpu",
                   rows: tuple[int, int] | None = None) -> np.ndarray:
    """`n` seeded samples quantised to uint8 [N, H, W, C] (see `generate`, `to_uint8`).

    `rows=(start, stop)` returns only samples [start, stop) of the n (one rank's shard); sample i
    depends only on (seed, i), so the shards of all ranks concatenate to the full set.
    """
    start, stop = (0, n) if rows is None else rows
    shape, _ = model_info(net)
    if len(shape) != 3:
        raise UserError(f"uint8 images need an image model, this one generates shape {shape}")
    if getattr(net, "meanflow_is_latent", False):
        raise UserError("this model generates latents, not images: decode them with the VAE first")
    x = generate(method, net, start, stop, steps=steps, seed=seed, batch_size=batch_size,
                 class_label=class_label, device=device)
    return to_uint8(x)


def parse_ema(ema: Any) -> float | None | str:
    """None -> 'default' (the first EMA decay of the run); 'raw'/'none'/0 -> raw weights; else a decay."""
    if ema is None or ema == "default":
        return "default"
    if isinstance(ema, str) and ema.lower() in ("raw", "none", "off"):
        return None
    try:
        value = float(ema)
    except (TypeError, ValueError):
        raise UserError(f"--ema must be a decay such as 0.9999, or 'raw', got {ema!r}") from None
    return None if value == 0.0 else value


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def load_generator(path: str | Path, ema: Any = None, device: str | torch.device = "cpu"):
    """Load a trained generator from a run folder (newest checkpoint) or a checkpoint file.

    Args:
        path: run folder or `.safetensors` checkpoint written by `meanflow train`.
        ema: None (the run's first EMA decay, raw weights if it has none), a decay (e.g. 0.9999),
            or 'raw' / 0 for the raw weights.
        device: where the network is put.

    Returns:
        (method, net, cfg): the method object, the network in eval mode (with `meanflow_shape`,
        `meanflow_num_classes` and `meanflow_is_latent` attributes), and the run's `Config`.
    """
    from meanflow.training.build import build_method_from, build_net
    from meanflow.training.checkpoint import Checkpoint
    from meanflow.training.config import config_from_dict

    ckpt = Checkpoint(path)
    cfg = config_from_dict(ckpt.config)
    try:
        shape = tuple(int(d) for d in ckpt.state["data_shape"])
        classes = int(ckpt.state["num_classes"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt.path} has no valid data_shape / num_classes in its state "
                        f"metadata ({_first_line(e)})") from e
    net = build_net(cfg, shape, classes)
    choice = parse_ema(ema)
    if choice == "default":
        choice = ckpt.ema_decays[0] if ckpt.ema_decays else None
    if choice is not None and float(choice) not in ckpt.ema_decays:
        ckpt.ema(choice)  # the UserError listing the decays the checkpoint has
    ckpt.load_into(net, "model/" if choice is None else f"ema/{float(choice)!r}/")
    bad = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"checkpoint {ckpt.path} holds non-finite weights ({bad[0]}"
                        f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): it cannot produce samples")
    net.to(device).eval().requires_grad_(False)
    net.meanflow_shape = shape
    net.meanflow_num_classes = classes
    net.meanflow_is_latent = bool(ckpt.state.get("is_latent", False))
    method = build_method_from(cfg, classes)
    return method, net, cfg
