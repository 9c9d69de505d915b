"""pMF's perceptual losses on the predicted image: a paired random resized crop, then LPIPS-VGG and
ConvNeXt-V2-B feature distances, each per sample.

Confirmed in the official code (``Lyy-iiis/pMF@75f6073``, ``utils/auxloss_util.py``, ``pmf.py``):

* crop (``auxloss_util.py:45-79``): per sample, ``area = H W U(0.08, 1)``, ``aspect = exp(U(log 3/4,
  log 4/3))``, ``w = clip(round(sqrt(area aspect)), 1, W)``, ``h = clip(round(sqrt(area / aspect)), 1,
  H)``, ``top ~ U{0..H-h}``, ``left ~ U{0..W-w}``; the SAME crop for the prediction and the data, both
  resized to 224 x 224 with an antialiased Keys cubic (``l.9-43``). Here the draws come from torch's RNG
  (a ``generator`` when given) and the resize is ``F.interpolate(mode="bicubic", antialias=True)`` of the
  cropped window (also Keys ``a = -0.5`` with antialiasing); the JAX resize may read pixels just
  outside the window near its edges, this one clamps at the window's edge (**U**: the effect of that
  difference was not measured);
* distances (``auxloss_util.py:99-124``): LPIPS-VGG of the two crops, and ``||f(a) - f(b)||^2`` of the
  ConvNeXt-V2-B pooled features (:mod:`meanflow.evaluation.convnext`);
* use (``pmf.py:438-456``): on ``x_hat = z_t - t u`` against the data ``x``, rows with ``t <
  perceptual_max_t`` only (0.8 in every config, ``configs/pMF_*_config.yml:16``), each distance
  adaptively weighted, times 0.4 (LPIPS) and 0.1 (ConvNeXt) in the configs.

Grey images are repeated to three channels. Both networks run in float32, frozen; gradients flow to
the prediction. Weights come only from local files the user names (never downloaded); the
optional sha256 of each file is checked once per process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from meanflow.errors import UserError

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def crop_params(n: int, height: int, width: int, *, scale=CROP_SCALE, ratio=CROP_RATIO,
                generator: torch.Generator | None = None) -> Tensor:
    """Random resized crop windows ``[n, 4]`` long: ``(top, left, h, w)`` per row (module docstring)."""
    u = torch.rand(n, 4, dtype=torch.float64, generator=generator)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[:, 1])
    w = torch.round(torch.sqrt(area * aspect)).clamp(1, width)
    h = torch.round(torch.sqrt(area / aspect)).clamp(1, height)
    top = torch.floor(u[:, 2] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(u[:, 3] * (width - w + 1)).clamp(max=width - w)
    return torch.stack([top, left, h, w], dim=1).long()


def paired_random_resized_crop(a: Tensor, b: Tensor, size: int = 224, *,
                               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The same random window of ``a`` and ``b`` (``[B, C, H, W]``), each resized to ``size x size``.

    Returns:
        ``(a', b')``, each ``[B, C, size, size]``; gradients flow to both inputs.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise UserError(f"paired crop needs two image batches of one shape, got {tuple(a.shape)} and "
                        f"{tuple(b.shape)}")
    params = crop_params(a.shape[0], a.shape[2], a.shape[3], generator=generator).tolist()
    outs = []
    for x in (a, b):
        rows = [x[i:i + 1, :, top:top + h, left:left + w] for i, (top, left, h, w) in enumerate(params)]
        outs.append(torch.cat([F.interpolate(r, size=(size, size), mode="bicubic", antialias=True,
                                             align_corners=False) for r in rows]))
    return outs[0], outs[1]


_VERIFIED: set[tuple[str, str]] = set()


def check_weights_option(weight: float, path: str | os.PathLike | None, sha256: str | None, what: str,
                         option: str) -> None:
    """One-line UserError for a positive loss weight without an existing weights file, a negative weight,
    or a malformed sha256 (called when the method is built, before any training)."""
    from meanflow.evaluation.digest import check_sha256_format

    if not (weight >= 0 and math.isfinite(weight)):
        raise UserError(f"{option}_weight must be a finite number >= 0, got {weight}")
    check_sha256_format(sha256, what)
    if weight > 0:
        if path is None:
            raise UserError(f"{option}_weight={weight} needs {option}_weights: the path of a local {what} "
                            "(.safetensors; nothing is downloaded), or set the weight to 0")
        if not Path(path).expanduser().is_file():
            raise UserError(f"{option}_weights: {what} {path} not found")


def _verified(path: str | os.PathLike, sha256: str | None, what: str) -> None:
    """Check the file's sha256 once per process (when one is expected)."""
    if sha256 is None:
        return
    key = (str(Path(path).expanduser().resolve()), sha256.lower())
    if key not in _VERIFIED:
        from meanflow.evaluation.digest import check_sha256

        check_sha256(Path(path).expanduser(), sha256, what)
        _VERIFIED.add(key)


def lpips_distance(a: Tensor, b: Tensor, weights: str | os.PathLike, sha256: str | None) -> Tensor:
    """LPIPS-VGG ``[B]`` (float32) of two crops (no further resize), from :mod:`meanflow.evaluation.lpips`."""
    from meanflow.evaluation.lpips import get_lpips

    _verified(weights, sha256, "LPIPS weights file")
    return get_lpips(weights, a.device)(_rgb(a).float(), _rgb(b).float(), resize=None)


def convnext_distance(a: Tensor, b: Tensor, weights: str | os.PathLike, sha256: str | None) -> Tensor:
    """``||f(a) - f(b)||^2`` ``[B]`` (float32) of ConvNeXt-V2-B pooled features of two crops."""
    from meanflow.evaluation.convnext import get_convnext

    net = get_convnext(weights, a.device, sha256)
    fa, fb = net(torch.cat([_rgb(a), _rgb(b)]).float()).chunk(2)
    return (fa - fb).square().sum(dim=1)


def _rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
