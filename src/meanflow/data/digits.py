"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download needed)."""

from __future__ import annotations

import numpy as np
import torch

from meanflow.data.types import ImageData, pad_images

NUM_TRAIN = 1500  # first 1,500 images train, remaining 297 test (a fixed, documented split)


def load_digits(split: str = "train", *, pad_to: int | None = None) -> ImageData:
    """Load the UCI optical digits bundled with scikit-learn.

    Pixels are integers 0..16, mapped to [-1, 1] by ``x = v / 8 - 1``.

    Args:
        split: ``"train"`` (first 1,500 images) or ``"test"`` (last 297).
        pad_to: pad the 8x8 images with -1 to ``pad_to x pad_to``.

    Returns:
        ImageData with x [N, 1, 8, 8] (or padded), y long [N] in [0, 10).
    """
    from sklearn.datasets import load_digits as sk_load_digits  # heavy import, only when asked for

    d = sk_load_digits()
    sl = slice(0, NUM_TRAIN) if split == "train" else slice(NUM_TRAIN, None)
    images = np.asarray(d.images[sl], dtype=np.float32)
    x = torch.from_numpy(images).unsqueeze(1).div_(8.0).sub_(1.0)
    y = torch.from_numpy(np.asarray(d.target[sl], dtype=np.int64))
    return ImageData(x=pad_images(x, pad_to), y=y, num_classes=10, name="digits",
                     class_names=tuple(str(i) for i in range(10)))
