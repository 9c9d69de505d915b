"""The `imagenet_pixels` dataset: an ImageNet-style class-folder tree, read image by image as drawn.

The pixel-space training set of pixel MeanFlow (pMF): no VAE, each drawn image is decoded, cut to
``R x R`` with ADM's centre crop (:mod:`meanflow.data.adm_crop`, the crop of the latent path and of
the FID reference batches), optionally mirrored, and scaled to ``[-1, 1]``::

    x = adm_center_crop(image, R) / 127.5 - 1        float32 [3, R, R]
    x = x[..., ::-1]  with probability 1/2            (option flip; the official pMF: off)

Layout: ``data_dir/<class>/<image>`` (or ``data_dir/train/<class>/<image>``); labels are the indices of
the *sorted* class folder names, files sorted within a class (torchvision's ``ImageFolder`` order, the
standard ImageNet labels). Only the file list is built up front (an ImageNet scan takes seconds); a
batch is decoded when the loop draws it, on `workers` threads (PIL releases the GIL while decoding).
The flips are drawn from torch's global generator, which the loop reseeds every step from (seed,
rank, step): a resumed run sees the same images. An unreadable image is a one-line UserError naming
the file when it is drawn.

Confirmed in the official code (github.com/Lyy-iiis/pMF at 75f6073, read for facts): the ADM crop on
the CPU (``utils/input_pipeline.py:97-117, 191-194``), ``/ 255`` then ``(x - 0.5) / 0.5``
(``l.40-49``), the flip only with ``dataset.use_flip``, False in ``configs/default.py:23`` and in no
pMF config.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from meanflow.data.adm_crop import adm_center_crop
from meanflow.data.image_folder import EXTENSIONS
from meanflow.errors import UserError

NAME = "imagenet_pixels"


def read_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """ADM centre crop of the image file `path`: uint8 ``[R, R, 3]``; UserError when unreadable."""
    try:
        with Image.open(path) as img:
            return adm_center_crop(img, resolution)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{NAME}: cannot read image {path} ({type(e).__name__}: {e})") from None


class FolderImages:
    """The `x` of the dataset: indexing with a batch of ids reads those images.

    Args:
        files: image paths, row i = image i.
        resolution: R, the side of the crop.
        flip: mirror each drawn image with probability 1/2 (torch's global generator).
        workers: decoding threads (0: decode in the calling thread).
    """

    def __init__(self, files: list[str], resolution: int, flip: bool = False, workers: int = 8):
        self.files, self.resolution = files, int(resolution)
        self.flip, self.workers = bool(flip), int(workers)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, 3, R, R)``, like a tensor of N images."""
        return (len(self.files), 3, self.resolution, self.resolution)

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, paths: list[str]) -> list[np.ndarray]:
        if self.workers <= 1 or len(paths) < 2:
            return [read_image(p, self.resolution) for p in paths]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="meanflow-images")
        return list(self._pool.map(lambda p: read_image(p, self.resolution), paths))

    def __getitem__(self, index) -> Tensor:
        """Images `index` (long ``[B]``, or an int): float32 ``[B, 3, R, R]`` in ``[-1, 1]``."""
        idx = np.asarray(torch.as_tensor(index), dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self.files)):
            raise IndexError(f"{NAME} index out of range [0, {len(self.files)})")
        if not len(idx):
            return torch.zeros(0, *self.shape[1:])
        mirror = (torch.rand(len(idx)) < 0.5).tolist() if self.flip else [False] * len(idx)
        arrays = self._read([self.files[i] for i in idx])
        batch = np.stack([a[:, ::-1] if m else a for a, m in zip(arrays, mirror)])  # [B, R, R, 3]
        x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32))
        return x.div_(127.5).sub_(1.0)


@dataclass
class PixelFolderData:
    """An image-folder tree as a dataset (the fields the loop reads from `ImageData`).

    Attributes:
        x: `FolderImages` (indexing reads images ``[B, 3, R, R]``).
        y: long ``[N]`` class ids.
        num_classes: class folders (or the `num_classes` option).
        class_names: the folder names, label order.
    """

    x: FolderImages
    y: Tensor
    num_classes: int
    name: str = NAME
    class_names: tuple[str, ...] | None = None
    is_latent: bool = False
    noise: None = None

    def __len__(self) -> int:
        return len(self.x)


def _images_in(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.path for e in it if e.is_file() and os.path.splitext(e.name)[1].lower() in EXTENSIONS)


def load_imagenet_pixels(split: str = "train", data_dir: str | os.PathLike | None = None, *,
                         resolution: int = 256, flip: bool = False, workers: int = 8,
                         num_classes: int | None = None) -> PixelFolderData:
    """Open the class-folder tree `data_dir` (its ``train`` subfolder when there is one).

    Args:
        split: ``"train"`` (the only split).
        data_dir: the ImageNet root (holding ``train/``) or the train folder itself.
        resolution: R of the ADM crop (256, 512).
        flip: random horizontal flips (official pMF: off).
        workers: decoding threads per process.
        num_classes: the class count when the folders are a subset of the classes (default: the
            number of class folders).

    Returns:
        PixelFolderData with ``x[i]`` float32 ``[B, 3, R, R]`` and ``y`` long ``[N]``.
    """
    if data_dir is None:
        raise UserError(f"{NAME}: set data.data_dir to the ImageNet folder (<dir>/train/<class>/<image>)")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise UserError(f"{NAME}: option resolution must be a positive integer, got {resolution!r}")
    if not isinstance(flip, bool):
        raise UserError(f"{NAME}: option flip must be true or false, got {flip!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise UserError(f"{NAME}: option workers must be an integer >= 0, got {workers!r}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"{NAME}: data folder {root} does not exist")
    if (root / split).is_dir():
        root = root / split
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{NAME}: {root} has no class folders (expected {root}/<class>/<image>)")
    files, labels = [], []
    for i, folder in enumerate(classes):
        found = _images_in(folder)
        files += found
        labels += [i] * len(found)
    if not files:
        raise UserError(f"{NAME}: no images ({', '.join(EXTENSIONS)}) in the {len(classes)} class folders "
                        f"of {root}")
    count = len(classes) if num_classes is None else num_classes
    if not isinstance(count, int) or isinstance(count, bool) or count < len(classes):
        raise UserError(f"{NAME}: option num_classes must be an integer >= the {len(classes)} class folders, "
                        f"got {num_classes!r}")
    return PixelFolderData(x=FolderImages(files, resolution, flip, workers),
                           y=torch.tensor(labels, dtype=torch.long), num_classes=count,
                           class_names=tuple(p.name for p in classes) if count == len(classes) else None)
