"""CIFAR-10 from the official python batches, and the verified offline subset.

The python batches are pickles, so each is md5-checked against the published value *before*
it is unpickled, and then unpickled with :mod:`meanflow.data.safe_pickle` (numpy globals only).
The batches are read from ``cifar-10-batches-py/`` when extracted, else straight out of the
official ``cifar-10-python.tar.gz`` in memory: nothing from the archive is written to disk, so
a hostile archive cannot place files anywhere.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from meanflow.data.files import dataset_dir, locate, verify_file
from meanflow.data.safe_pickle import safe_loads
from meanflow.data.types import ImageData, uint8_to_unit
from meanflow.errors import UserError

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
BATCH_DIR = "cifar-10-batches-py"
# Published per-file md5s of the extracted batches (as in torchvision).
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
SPLIT_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_MAX_BATCH_BYTES = 64 << 20  # a genuine batch is ~30 MB

SUBSET_FILE = "cifar10_verified_subset.npz"
SUBSET_SHA256 = "9166985addce3c0b71e408abef7ff9dbb61261938b6957feed61db7b6ea8655c"


def parse_batch(raw: bytes, source: str, md5: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Verify and decode one python batch.

    Args:
        raw: the pickle's bytes.
        source: file name used in messages.
        md5: expected md5 of ``raw``; checked before unpickling (None skips the check).

    Returns:
        (images uint8 [n, 3, 32, 32], labels int64 [n]).

    Raises:
        UserError: checksum mismatch, forbidden pickle content, or an unexpected structure.
    """
    if md5 is not None and hashlib.md5(raw).hexdigest() != md5:
        raise UserError(f"{source}: md5 checksum mismatch (expected {md5}); refusing to unpickle it")
    try:
        batch = safe_loads(raw)
    except Exception as e:  # hostile or damaged pickles can raise almost anything
        raise UserError(f"{source}: rejected as a CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise UserError(f"{source}: not a CIFAR-10 batch (top level is {type(batch).__name__}, not dict)")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{source}: 'data' is not a uint8 [n, 3072] array")
    if not isinstance(labels, list | np.ndarray) or len(labels) != data.shape[0]:
        raise UserError(f"{source}: 'labels' missing or not one per image")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise UserError(f"{source}: labels outside [0, 10)")
    return data.reshape(-1, 3, 32, 32), labels


def _read_from_archive(archive: Path, names: tuple[str, ...], verify: bool) -> list[tuple[bytes, str]]:
    if verify:
        verify_file(archive, ARCHIVE_MD5)
    out = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                member_name = f"{BATCH_DIR}/{name}"
                try:
                    member = tar.getmember(member_name)
                except KeyError:
                    raise UserError(f"{archive}: no member {member_name}") from None
                if not member.isfile() or member.size > _MAX_BATCH_BYTES:
                    raise UserError(f"{archive}: member {member_name} is not a regular batch file")
                out.append((tar.extractfile(member).read(), f"{archive}:{member_name}"))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise UserError(f"{archive}: corrupt or truncated archive ({e})") from None
    return out


def load_cifar10(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    verify: bool = True,
) -> ImageData:
    """Load CIFAR-10 (50,000 train / 10,000 test RGB 32x32 images, 10 classes) in [-1, 1].

    Looks in ``data_dir`` (default ``cache_dir() / "cifar10"``) for, in order:
    ``cifar-10-batches-py/<batch>``, ``<batch>`` directly, or ``cifar-10-python.tar.gz``;
    with ``download=True`` a missing archive is fetched (md5 c58f3010...) and read in memory.

    Args:
        split: ``"train"`` (data_batch_1..5) or ``"test"`` (test_batch).
        data_dir: the folder described above.
        download: fetch the official archive when nothing is found.
        verify: check published md5s before unpickling (strongly recommended).

    Returns:
        ImageData with x [N, 3, 32, 32], y long [N] in [0, 10).
    """
    folder = dataset_dir("cifar10", data_dir)
    names = SPLIT_BATCHES[split]
    raws = None
    for sub in (folder / BATCH_DIR, folder):
        if all((sub / n).is_file() for n in names):
            raws = [((sub / n).read_bytes(), str(sub / n)) for n in names]
            break
    if raws is None:
        missing = next(folder / BATCH_DIR / n for n in names if not (folder / BATCH_DIR / n).is_file())
        if not (folder / ARCHIVE).is_file() and not download:
            raise UserError(
                f"cifar10: {missing} not found (nor {folder / ARCHIVE}); pass download=True "
                "(CLI: --download) or point data_dir (CLI: --data-dir) at the extracted batches"
            )
        archive = locate(folder, ARCHIVE, dataset="cifar10", urls=ARCHIVE_URLS, md5=ARCHIVE_MD5,
                         download=download)
        raws = _read_from_archive(archive, names, verify)
    parts = [parse_batch(raw, src, BATCH_MD5[n] if verify else None) for (raw, src), n in zip(raws, names)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageData(x=uint8_to_unit(images, layout="NCHW"), y=torch.from_numpy(labels), num_classes=10,
                     name="cifar10", class_names=CLASS_NAMES)


def load_cifar10_subset(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    verify: bool = True,
) -> ImageData:
    """Load the verified offline CIFAR-10 subset (5,085 train / 1,017 test genuine images).

    The file ``cifar10_verified_subset.npz`` holds, per batch, ``<batch>_labels`` uint8 [10000] and
    ``<batch>_images_prefix`` uint8 [k, 3, 32, 32] (the first k images); image i gets label i.
    It cannot be downloaded: ``data_dir`` must hold it (default ``cache_dir() / "cifar10-subset"``).

    Returns:
        ImageData with x [N, 3, 32, 32], y long [N] in [0, 10).
    """
    path = locate(dataset_dir("cifar10-subset", data_dir), SUBSET_FILE, dataset="cifar10-subset")
    if verify:
        verify_file(path, SUBSET_SHA256, "sha256")
    images, labels = [], []
    try:
        with np.load(path, allow_pickle=False) as z:
            for name in SPLIT_BATCHES[split]:
                im, lb = z[f"{name}_images_prefix"], z[f"{name}_labels"]
                if im.dtype != np.uint8 or im.ndim != 4 or im.shape[1:] != (3, 32, 32) or len(lb) < len(im):
                    raise UserError(f"{path}: {name} arrays have unexpected shapes or types")
                images.append(im)
                labels.append(lb[: len(im)].astype(np.int64))
    except KeyError as e:
        raise UserError(f"{path}: missing array {e}") from None
    except (ValueError, OSError, zlib.error, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable .npz file ({e})") from None
    y = torch.from_numpy(np.concatenate(labels))
    return ImageData(x=uint8_to_unit(np.concatenate(images), layout="NCHW"), y=y, num_classes=10,
                     name="cifar10-subset", class_names=CLASS_NAMES)
