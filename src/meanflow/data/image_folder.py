"""A folder of image files: one subfolder per class, or a flat folder of unlabelled images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from meanflow.data.types import ImageData, uint8_to_unit
from meanflow.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def center_crop_resize(img: Image.Image, resolution: int) -> np.ndarray:
    """Center-crop ``img`` to a square and resize it to ``resolution``; RGB uint8 [res, res, 3].

    The crop keeps the largest centred square; downsizing uses a box filter first when the image is
    at least twice too large (as in ADM/EDM preprocessing) and bicubic for the final step.
    """
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    while img.size[0] >= 2 * resolution:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), Image.BOX)
    img = img.resize((resolution, resolution), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def load_image_folder(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    resolution: int = 32,
    num_classes: int | None = None,
) -> ImageData:
    """Load every image under ``data_dir`` into memory, center-cropped and resized to a square.

    Layout: ``data_dir/<class>/<image>`` gives labels from the *sorted* class folder names
    (label i = i-th name); a ``data_dir`` with only image files gives unlabelled data. If
    ``data_dir/train`` (or ``data_dir/test``) exists, that folder is used for the split.

    Args:
        split: ``"train"`` or ``"test"``; ``"test"`` needs a ``test`` subfolder.
        data_dir: the root folder (required).
        resolution: output side length in pixels.
        num_classes: override the class count (e.g. when a subset omits some classes).

    Returns:
        ImageData with x [N, 3, resolution, resolution] in [-1, 1], y long [N] or None.
    """
    if data_dir is None:
        raise UserError("image-folder: data_dir (CLI: --data-dir) is required")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"image-folder: {root} is not a folder")
    if resolution < 1:
        raise UserError(f"image-folder: resolution must be positive, got {resolution}")
    if (root / split).is_dir():
        root = root / split
    elif split != "train":
        raise UserError(f"image-folder: split {split!r} needs a folder {root / split}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_dirs:
        files = [(f, i) for i, d in enumerate(class_dirs) for f in _images_in(d)]
        class_names = tuple(d.name for d in class_dirs)
    else:
        files = [(f, -1) for f in _images_in(root)]
        class_names = None
    if not files:
        raise UserError(f"image-folder: no images ({', '.join(EXTENSIONS)}) found under {root}")
    images = np.empty((len(files), resolution, resolution, 3), dtype=np.uint8)
    for k, (path, _) in enumerate(files):
        try:
            with Image.open(path) as img:
                images[k] = center_crop_resize(img, resolution)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise UserError(f"{path}: cannot read image ({e})") from None
    x = uint8_to_unit(images)
    if class_names is None:
        return ImageData(x=x, y=None, num_classes=0, name="image-folder")
    n_cls = num_classes if num_classes is not None else len(class_names)
    y = torch.tensor([label for _, label in files], dtype=torch.long)
    return ImageData(x=x, y=y, num_classes=n_cls, name="image-folder",
                     class_names=class_names if n_cls == len(class_names) else None)
