"""Image sources and reference statistics files for FID / KID.

Real and generated images take the same path: float images in [-1, 1] are quantised exactly like
generated samples (``round((x + 1) * 127.5)`` clipped to [0, 255], uint8, NHWC), grayscale is
repeated to 3 channels at embedding time, and everything is then resized to 299 inside the network.

A statistics file is an ``.npz`` with ``mu`` [D] and ``sigma`` [D, D] (float64), ``n``, optionally
``features`` (float32 [M, D], a seeded random subset of the reference features, for KID) and metadata
(``image_shape`` (H, W, C), ``source``, ``network``, ``quantization``). It loads without pickle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from meanflow.errors import UserError
from meanflow.evaluation.fid import (
    extract_features,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
)

NETWORK_NAME = "pt_inception-2015-12-05 pool3"
QUANTIZATION = "round((x+1)*127.5) clipped to [0,255]"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_ARRAY_KEYS = ("samples", "images", "arr_0", "x")


def quantize_uint8(x) -> np.ndarray:
    """Float images [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] via ``round((x + 1) * 127.5)`` clipped."""
    x = torch.as_tensor(x)
    if x.ndim != 4:
        raise UserError(f"expected images [N, C, H, W], got shape {tuple(x.shape)}")
    u8 = ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return u8.permute(0, 2, 3, 1).contiguous().numpy()


def as_uint8_nhwc(arr: np.ndarray, what: str = "images") -> np.ndarray:
    """Normalise an image array to uint8 [N, H, W, C], C in {1, 3}.

    Accepts uint8 NHWC or NCHW, [N, H, W] grayscale, or float in [-1, 1] (quantised like samples).
    """
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise UserError(f"{what}: expected a 4-D image array [N, H, W, C], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise UserError(f"{what}: no images (empty array)")
    if arr.dtype == np.uint8:
        if arr.shape[-1] in (1, 3):
            return arr
        if arr.shape[1] in (1, 3):
            return np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
    elif np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(arr.min()), float(arr.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1.001 or hi > 1.001:
            raise UserError(f"{what}: float images must lie in [-1, 1], found [{lo:.3g}, {hi:.3g}]")
        if arr.shape[1] in (1, 3):
            return quantize_uint8(torch.from_numpy(np.ascontiguousarray(arr)))
        if arr.shape[-1] in (1, 3):
            return quantize_uint8(torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))))
    else:
        raise UserError(f"{what}: images must be uint8 or float in [-1, 1], got dtype {arr.dtype}")
    raise UserError(f"{what}: cannot find a channel axis of size 1 or 3 in shape {arr.shape}")


class ImageFolder:
    """Images under a folder (recursive, sorted), decoded lazily as uint8 RGB [b, H, W, 3] per slice.

    With `crop`, each image is first ADM-centre-cropped to crop x crop (`data.adm_crop`: the
    preprocessing of the ImageNet latents and of ADM's reference batch), so images of any size mix.
    """

    def __init__(self, root: str | os.PathLike, crop: int | None = None):
        self.root = Path(root)
        self.crop = crop
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.files:
            raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}")
        self.shape = self._read(0).shape  # (H, W, 3); every image must match

    def _read(self, i: int) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                if self.crop is not None:
                    from meanflow.data.adm_crop import adm_center_crop

                    return adm_center_crop(im, self.crop)
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read image {self.files[i]}: {exc}") from exc

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("ImageFolder supports slicing only")
        out = []
        for i in range(*index.indices(len(self))):
            im = self._read(i)
            if im.shape != self.shape:
                raise UserError(f"{self.files[i]} is {im.shape[1]}x{im.shape[0]} but {self.files[0]} is "
                                f"{self.shape[1]}x{self.shape[0]}: all images must have one size")
            out.append(im)
        return np.stack(out) if out else np.zeros((0,) + self.shape, np.uint8)


def select_image_array(keys: list[str]) -> str | None:
    """The key of the image array in an ``.npz``: samples/images/arr_0/x, or its only array."""
    return next((k for k in IMAGE_ARRAY_KEYS if k in keys), keys[0] if len(keys) == 1 else None)


def load_npz_images(path: str | os.PathLike, what: str = "image file") -> np.ndarray:
    """uint8 [N, H, W, C] from an ``.npz`` (key samples/images/arr_0/x, or its only array) or ``.npy``.

    Read without pickle: a file of Python objects is refused. Any problem is a one-line UserError.
    """
    from meanflow.utils.files import check_input_file, is_npy, load_npy, open_npz

    path = check_input_file(path, what)
    if is_npy(path):
        return as_uint8_nhwc(load_npy(path, what), f"{what} {path}")
    with open_npz(path, what) as data:
        key = select_image_array(data.keys)
        if key is None:
            expected = ", ".join(IMAGE_ARRAY_KEYS)
            raise UserError(f"{what} {path} has no image array (expected one of {expected}; "
                            f"found {', '.join(data.keys)})")
        return as_uint8_nhwc(data[key], f"{what} {path} (array {key!r})")


def load_images(path: str | os.PathLike, what: str = "image source", crop: int | None = None):
    """An image source from a folder of image files (ADM-centre-cropped to `crop` when given), or an
    ``.npz`` / ``.npy`` array of images."""
    path = Path(path)
    if path.is_dir():
        return ImageFolder(path, crop=crop)
    if crop is not None:
        raise UserError(f"{what} {path}: --crop applies to a folder of image files only")
    return load_npz_images(path, what)


def dataset_images(name: str, split: str = "train", data_dir=None, download: bool = False) -> np.ndarray:
    """A ``meanflow.data`` image dataset as uint8 [N, H, W, C], quantised like generated samples."""
    from meanflow.data import build_dataset

    ds = build_dataset(name, split=split, data_dir=data_dir, download=download)
    x = getattr(ds, "x", None)
    if x is None or x.ndim != 4:
        raise UserError(f"dataset {name!r} is not an image dataset; FID needs images")
    if getattr(ds, "is_latent", False):
        raise UserError(f"dataset {name!r} holds latents, not pixels; compute FID on decoded images")
    return as_uint8_nhwc(x.numpy() if isinstance(x, torch.Tensor) else x, f"dataset {name!r}")


@dataclass
class RefStats:
    """Reference statistics: mu [D], sigma [D, D] float64, n images, optional KID features [M, D]."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray | None = None
    image_shape: tuple[int, ...] | None = None  # (H, W, C) of the source images
    source: str = ""


def source_shape(images) -> tuple[int, int, int]:
    """(H, W, C) of an image source."""
    shape = tuple(int(s) for s in images.shape)  # arrays: [N, H, W, C]; lazy sources: (H, W, C)
    return shape[1:] if len(shape) == 4 else shape


def compute_ref_stats(images, model, *, batch_size: int = 50, device="cpu", kid_features: int = 10000,
                      seed: int = 0, progress: bool = True, source: str = "") -> RefStats:
    """Embed every image and summarise: mu, sigma (float64) and up to ``kid_features`` rows for KID."""
    feats = extract_features(images, model, batch_size=batch_size, device=device, progress=progress,
                             desc="reference")
    mu, sigma = feature_statistics(feats)
    kept = None
    if kid_features > 0:
        idx = np.arange(len(feats))
        if len(feats) > kid_features:
            idx = np.sort(np.random.default_rng(seed).choice(len(feats), kid_features, replace=False))
        kept = feats[idx].astype(np.float32)
    return RefStats(mu, sigma, len(feats), kept, source_shape(images), source)


def save_stats(path: str | os.PathLike, stats: RefStats) -> None:
    """Write ``stats`` as an ``.npz`` atomically: a temp file in the same folder, renamed into place
    when complete and removed on any failure. An unwritable ``path`` is a one-line UserError."""
    from meanflow.utils.files import atomic_files, prepare_output

    path = prepare_output(path, f"statistics file {path}")
    arrays = dict(mu=stats.mu.astype(np.float64), sigma=stats.sigma.astype(np.float64),
                  n=np.int64(stats.n), network=np.str_(NETWORK_NAME), quantization=np.str_(QUANTIZATION),
                  source=np.str_(stats.source))
    if stats.image_shape is not None:
        arrays["image_shape"] = np.asarray(stats.image_shape, np.int64)
    if stats.features is not None:
        arrays["features"] = stats.features.astype(np.float32)
    with atomic_files("statistics") as files:
        np.savez(files.tmp(path), **arrays)


def _numeric(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise UserError(f"reference statistics {path}: {key!r} has dtype {arr.dtype}, expected real numbers")
    return arr


def stats_from_npz(data, path: Path) -> RefStats:
    """A :class:`RefStats` from an open statistics archive (``meanflow.utils.files.open_npz``)."""
    if "mu" not in data or "sigma" not in data:
        raise UserError(f"reference statistics {path} has no 'mu' and 'sigma' arrays "
                        f"(found {', '.join(data.keys)}); is it a statistics file?")
    mu = _numeric(data["mu"], path, "mu").astype(np.float64)
    sigma = _numeric(data["sigma"], path, "sigma").astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f"reference statistics {path}: mu {mu.shape} and sigma {sigma.shape} "
                        f"do not fit together")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"reference statistics {path} contain non-finite values")
    n = 0
    if "n" in data:
        n_arr = _numeric(data["n"], path, "n")
        if n_arr.size != 1:
            raise UserError(f"reference statistics {path}: 'n' must be one number, got shape {n_arr.shape}")
        n = int(n_arr.reshape(()))
    feats = None
    if "features" in data:
        feats = _numeric(data["features"], path, "features")
        if feats.ndim != 2 or feats.shape[1] != mu.shape[0]:
            raise UserError(f"reference statistics {path}: features {feats.shape} do not fit mu {mu.shape}")
    shape = None
    if "image_shape" in data:
        raw = _numeric(data["image_shape"], path, "image_shape")
        if raw.ndim != 1 or len(raw) not in (2, 3):
            raise UserError(f"reference statistics {path}: image_shape must be (H, W, C), got {raw.tolist()}")
        shape = tuple(int(v) for v in raw)
    source = str(data["source"]) if "source" in data else ""
    return RefStats(mu, sigma, n, feats, shape, source)


def load_stats(path: str | os.PathLike) -> RefStats:
    """Read a statistics ``.npz``: ours, or any with ``mu`` and ``sigma`` (e.g. the ADM reference batch).

    Read without pickle; any problem with the file is a one-line UserError.
    """
    from meanflow.utils.files import open_npz

    path = Path(path)
    with open_npz(path, "reference statistics") as data:
        return stats_from_npz(data, path)


def check_compatible(images, ref: RefStats, what: str = "samples") -> None:
    """Refuse to compare images with statistics of a different resolution (almost always a mistake)."""
    h, w, _ = source_shape(images)
    if ref.image_shape is not None and tuple(ref.image_shape[:2]) != (h, w):
        rh, rw = ref.image_shape[:2]
        raise UserError(f"{what} are {h}x{w} images but the reference statistics were computed on "
                        f"{rh}x{rw} images ({ref.source or 'unknown source'})")


def evaluate_images(images, ref: RefStats, model, *, batch_size: int = 50, device="cpu",
                    progress: bool = True, kid_subsets: int = 100, kid_subset_size: int = 1000,
                    seed: int = 0, fid_method: str = "sqrtm") -> dict:
    """FID (and KID when the reference carries features) of uint8 images [N, H, W, C] against ``ref``.

    Returns ``{"fid", "kid", "kid_std", "num_samples", "num_reference"}`` (KID entries None without
    reference features). Also returns the features under ``"_features"`` for further metrics.
    """
    check_compatible(images, ref)
    feats = extract_features(images, model, batch_size=batch_size, device=device, progress=progress,
                             desc="samples")
    if feats.shape[1] != ref.mu.shape[0]:
        raise UserError(
            f"features are {feats.shape[1]}-d but the reference statistics are {ref.mu.shape[0]}-d"
        )
    mu, sigma = feature_statistics(feats)
    fid = frechet_distance(mu, sigma, ref.mu, ref.sigma, method=fid_method)
    result = {"fid": fid, "kid": None, "kid_std": None,
              "num_samples": int(feats.shape[0]), "num_reference": int(ref.n)}
    if ref.features is not None and len(ref.features) >= 2:
        kid, kid_std = kernel_inception_distance(feats, ref.features, num_subsets=kid_subsets,
                                                 subset_size=kid_subset_size, seed=seed)
        result.update(kid=kid, kid_std=kid_std)
    result["_features"] = feats
    return result
