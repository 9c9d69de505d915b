"""The dataset registry: one name per dataset, one entry point ``build_dataset``."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass

from meanflow.data import (
    arrays,
    cifar,
    digits,
    idx,
    image_folder,
    imagenet_pixels,
    latent_cache,
    pairs,
    points,
)
from meanflow.data.types import ImageData, PointData
from meanflow.errors import UserError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one named dataset.

    Attributes:
        load: ``load(split, data_dir, download, **options)`` returning ImageData or PointData.
        options: the keyword options ``load`` accepts (checked before calling it).
        kind: ``"image"``, ``"latent"``, ``"points"`` or ``"pairs"`` (images or points with their noise).
        description: one line for listings.
        splits: the splits the files hold (``data.split=all`` reads each of them once).
    """

    load: Callable[..., ImageData | PointData]
    options: tuple[str, ...]
    kind: str
    description: str
    splits: tuple[str, ...] = SPLITS


def _idx(name):
    return lambda split, data_dir, download, **kw: idx.load_idx_dataset(name, split, data_dir, download, **kw)


def _toy(name):
    return lambda split, data_dir, download, **kw: points.load_toy2d(name, split, **kw)


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        lambda split, data_dir, download, **kw: digits.load_digits(split, **kw), ("pad_to",), "image",
        "scikit-learn 8x8 digits, 1x8x8, 10 classes (bundled, 1500/297)"),
    "mnist": DatasetSpec(_idx("mnist"), ("pad_to", "verify"), "image",
                         "MNIST 1x28x28, 10 classes (60k/10k, md5-verified IDX files)"),
    "fashion-mnist": DatasetSpec(_idx("fashion-mnist"), ("pad_to", "verify"), "image",
                                 "Fashion-MNIST 1x28x28, 10 classes (60k/10k, md5-verified IDX files)"),
    "cifar10": DatasetSpec(cifar.load_cifar10, ("verify",), "image",
                           "CIFAR-10 3x32x32, 10 classes (50k/10k, md5-verified python batches)"),
    "cifar10-subset": DatasetSpec(
        lambda split, data_dir, download, **kw: cifar.load_cifar10_subset(split, data_dir, **kw),
        ("verify",), "image", "verified offline CIFAR-10 subset 3x32x32 (5085/1017, needs data_dir)"),
    "image-folder": DatasetSpec(
        lambda split, data_dir, download, **kw: image_folder.load_image_folder(split, data_dir, **kw),
        ("resolution", "num_classes"), "image", "a folder of images, one subfolder per class (data_dir)"),
    "imagenet_pixels": DatasetSpec(
        lambda split, data_dir, download, **kw: imagenet_pixels.load_imagenet_pixels(split, data_dir, **kw),
        ("resolution", "flip", "workers", "num_classes"), "image",
        "ImageNet-style class folders (data_dir), read as drawn, ADM centre crop to resolution (pMF)",
        splits=("train",)),
    "npz": DatasetSpec(
        lambda split, data_dir, download, **kw: arrays.load_npz(split, data_dir, **kw),
        ("path", "num_classes"), "image", "uint8 images [N,H,W,C] (+labels) in a .npz file"),
    "latents": DatasetSpec(
        lambda split, data_dir, download, **kw: arrays.load_latents(split, data_dir, **kw),
        ("path", "num_classes"), "latent", "pre-encoded latents [N,4,32,32] (+labels), .npz or .safetensors"),
    "latent_cache": DatasetSpec(
        lambda split, data_dir, download, **kw: latent_cache.load_latent_cache(split, data_dir, **kw), (),
        "latent", "VAE posteriors of `meanflow encode` (data_dir: the cache), a fresh latent per draw",
        splits=("train",)),
    "pairs": DatasetSpec(
        lambda split, data_dir, download, **kw: pairs.load_pairs(split, data_dir, **kw), ("path",), "pairs",
        "coupled (noise, sample) pairs of a trained flow from `meanflow reflow-pairs` (data_dir: its folder)",
        splits=("train",)),
    **{
        name: DatasetSpec(_toy(name), ("n", "seed"), "points", f"2-D toy distribution '{name}'")
        for name in points.TOY2D_NAMES
    },
}


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(DATASETS)


def build_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    **kw,
) -> ImageData | PointData:
    """Build a dataset by name.

    Args:
        name: a key of :data:`DATASETS` (see :func:`list_datasets`).
        split: ``"train"`` or ``"test"``.
        data_dir: where the files are (a folder, or the file itself for ``npz``/``latents``);
            default: ``$MEANFLOW_CACHE/<name>`` or ``~/.cache/meanflow/<name>``.
        download: fetch missing files for the datasets that can be downloaded.
        **kw: per-dataset options (``DATASETS[name].options``), e.g. ``pad_to=32``, ``resolution=64``.

    Returns:
        ImageData (x float32 [N, C, H, W], in [-1, 1] for pixels) or PointData (x float32 [N, D]).

    Raises:
        UserError: unknown name, split or option, or missing / corrupt files.
    """
    spec = DATASETS.get(name)
    if spec is None:
        close = difflib.get_close_matches(str(name), DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown dataset {name!r}{hint}; choose from: {', '.join(list_datasets())}")
    if split not in spec.splits:
        raise UserError(f"{name}: unknown split {split!r}; choose from: {', '.join(spec.splits)}")
    bad = sorted(set(kw) - set(spec.options))
    if bad:
        allowed = ", ".join(spec.options) or "none"
        raise UserError(f"{name}: unknown option(s) {', '.join(bad)}; options: {allowed}")
    return spec.load(split, data_dir, download, **kw)
