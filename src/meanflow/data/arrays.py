"""Datasets stored as arrays: ``npz`` (uint8 images) and ``latents`` (pre-encoded VAE latents).

Latent convention: the ImageNet presets train on Stable Diffusion VAE latents [N, 4, 32, 32]
(256x256 images, downsampling 8). The SD-VAE convention multiplies the encoder's mean (or sample)
by 0.18215 so the latents have roughly unit variance, and divides by it before decoding. This
module applies *no* scaling: store latents already multiplied by 0.18215 (the usual practice),
or scale them yourself.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from meanflow.data.types import ImageData, uint8_to_unit
from meanflow.errors import UserError

SD_VAE_SCALE = 0.18215  # documented convention only; never applied here


def _resolve_path(name: str, path, data_dir) -> Path:
    p = path if path is not None else data_dir
    if p is None:
        raise UserError(f"{name}: give the file with path=... (CLI: --data-dir FILE)")
    p = Path(p).expanduser()
    if not p.is_file():
        raise UserError(f"{name}: {p} not found")
    return p


def _read_npz(p: Path) -> dict[str, np.ndarray]:
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise UserError(f"{p}: not an .npz archive (a single .npy array?)")
        with z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise UserError(f"{p}: not a readable .npz file ({e})") from None


def _pick(arrays: dict, keys: tuple[str, ...], split: str) -> np.ndarray | None:
    # Split-specific keys ("train_images") win over the plain ones ("images").
    for k in (f"{split}_{keys[0]}", *keys):
        if k in arrays:
            return arrays[k]
    return None


def _labels(arrays, split, p: Path, n: int, num_classes: int | None) -> tuple[torch.Tensor | None, int]:
    lb = _pick(arrays, ("labels", "arr_1"), split)
    if lb is None:
        return None, 0
    if lb.shape != (n,) or not np.issubdtype(lb.dtype, np.integer):
        raise UserError(f"{p}: labels must be integers [{n}], got {lb.dtype} {lb.shape}")
    if n and lb.min() < 0:
        raise UserError(f"{p}: negative labels")
    y = torch.from_numpy(lb.astype(np.int64))
    return y, num_classes if num_classes is not None else (int(lb.max()) + 1 if n else 0)


def load_npz(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    path: str | os.PathLike | None = None,
    num_classes: int | None = None,
) -> ImageData:
    """Load uint8 images from a ``.npz`` file.

    Keys: images under ``images`` (or ``arr_0``, what ``np.savez(f, x)`` writes), optional integer
    labels under ``labels`` (or ``arr_1``); ``train_images`` / ``test_images`` (and
    ``<split>_labels``) take precedence when present, otherwise the same arrays serve every split.

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: the .npz file, if ``path`` is not given.
        path: the .npz file.
        num_classes: class count; default ``max(label) + 1``.

    Returns:
        ImageData with x [N, C, H, W] in [-1, 1] from images uint8 [N, H, W, C] (C = 1 or 3) or [N, H, W].
    """
    p = _resolve_path("npz", path, data_dir)
    arrays = _read_npz(p)
    im = _pick(arrays, ("images", "arr_0"), split)
    if im is None:
        raise UserError(f"{p}: no 'images' (or 'arr_0') array; found {sorted(arrays)}")
    if im.dtype != np.uint8 or im.ndim not in (3, 4) or (im.ndim == 4 and im.shape[-1] not in (1, 3)):
        raise UserError(f"{p}: images must be uint8 [N, H, W, C] with C in (1, 3), got {im.dtype} {im.shape}")
    y, n_cls = _labels(arrays, split, p, im.shape[0], num_classes)
    return ImageData(x=uint8_to_unit(im), y=y, num_classes=n_cls, name="npz")


def load_latents(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    path: str | os.PathLike | None = None,
    num_classes: int | None = None,
) -> ImageData:
    """Load pre-encoded latents [N, C, H, W] (e.g. SD-VAE [N, 4, 32, 32]) from .npz or .safetensors.

    Keys: ``latents`` (or ``arr_0``), optional ``labels``; ``<split>_latents`` / ``<split>_labels``
    take precedence. Values are returned unscaled (see the module note on 0.18215).

    Returns:
        ImageData with ``is_latent=True``, x float32 [N, C, H, W], y long [N] or None.
    """
    p = _resolve_path("latents", path, data_dir)
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            arrays = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{p}: not a readable .safetensors file ({e})") from None
    else:
        arrays = _read_npz(p)
    lat = _pick(arrays, ("latents", "arr_0"), split)
    if lat is None:
        raise UserError(f"{p}: no 'latents' (or 'arr_0') array; found {sorted(arrays)}")
    if lat.ndim != 4 or not np.issubdtype(lat.dtype, np.floating):
        raise UserError(f"{p}: latents must be float [N, C, H, W], got {lat.dtype} {lat.shape}")
    if not np.isfinite(lat).all():
        raise UserError(f"{p}: latents contain NaN or infinity")
    y, n_cls = _labels(arrays, split, p, lat.shape[0], num_classes)
    x = torch.from_numpy(np.ascontiguousarray(lat, dtype=np.float32))
    return ImageData(x=x, y=y, num_classes=n_cls, name="latents", is_latent=True)
