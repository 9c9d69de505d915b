"""The ADM / DiT ImageNet preprocessing: halve with a box filter, resize bicubically, crop the centre.

This is the crop the ImageNet-256 FID reference batch (ADM's `VIRTUAL_imagenet256_labeled.npz`) and
the DiT / MeanFlow latents were made with, so training data and reference statistics match:

    while min(W, H) >= 2 * size:   (W, H) <- (W // 2, H // 2)          (BOX)
    s = size / min(W, H);          (W, H) <- (round(W s), round(H s))  (BICUBIC)
    keep the centred size x size window (offsets floor((W - size) / 2), floor((H - size) / 2))

It differs from `image_folder.center_crop_resize` (crop first, then resize). Images whose short side
is below `size` are upscaled bicubically, as ADM does.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def adm_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop of `img` to `size` x `size`.

    Args:
        img: any PIL image (converted to RGB).
        size: side of the output square, e.g. 256.

    Returns:
        uint8 [size, size, 3].
    """
    img = img.convert("RGB")
    while min(img.size) >= 2 * size:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), resample=Image.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top:top + size, left:left + size])
