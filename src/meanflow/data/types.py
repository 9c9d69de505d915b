"""The two in-memory dataset types every builder returns: images and points."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from meanflow.errors import UserError


@dataclass
class ImageData:
    """A labelled or unlabelled set of images held in memory.

    Attributes:
        x: float32 tensor [N, C, H, W]. Pixel datasets are scaled to [-1, 1]
            (``x = u8 / 127.5 - 1``); latent datasets (``is_latent=True``) are stored unscaled.
        y: long tensor [N] with class ids in [0, num_classes), or None when unlabelled.
        num_classes: number of classes, 0 when unlabelled.
        name: the registry name the data was built from (e.g. ``"mnist"``).
        class_names: optional human-readable names, one per class.
        is_latent: True when ``x`` holds encoder latents rather than pixels.
        noise: float32 tensor [N, C, H, W] coupled with ``x`` (row i is the noise that the model's
            ODE carried to ``x[i]``; the ``pairs`` dataset), or None for ordinary data.
    """

    x: Tensor
    y: Tensor | None
    num_classes: int
    name: str
    class_names: tuple[str, ...] | None = None
    is_latent: bool = False
    noise: Tensor | None = None

    def __post_init__(self):
        if self.x.ndim != 4 or self.x.dtype != torch.float32:
            raise ValueError(
                f"ImageData.x must be float32 [N, C, H, W], got {self.x.dtype} {tuple(self.x.shape)}"
            )
        _check_labels(self.x, self.y, self.num_classes, self.name)
        _check_noise(self.x, self.noise, self.name)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x.shape[1:])


@dataclass
class PointData:
    """A set of points in R^D held in memory.

    Attributes:
        x: float32 tensor [N, D].
        y: long tensor [N] or None (always None for the 2-D toy sets).
        num_classes: number of classes, 0 when unlabelled.
        name: the registry name the data was built from.
        noise: float32 tensor [N, D] coupled with ``x`` (the ``pairs`` dataset), or None.
    """

    x: Tensor
    y: Tensor | None
    num_classes: int
    name: str
    noise: Tensor | None = None

    def __post_init__(self):
        if self.x.ndim != 2 or self.x.dtype != torch.float32:
            raise ValueError(f"PointData.x must be float32 [N, D], got {self.x.dtype} {tuple(self.x.shape)}")
        _check_labels(self.x, self.y, self.num_classes, self.name)
        _check_noise(self.x, self.noise, self.name)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        """D, the dimension of one point."""
        return self.x.shape[1]


def _check_labels(x: Tensor, y: Tensor | None, num_classes: int, name: str) -> None:
    if y is None:
        if num_classes != 0:
            raise ValueError(f"{name}: num_classes={num_classes} but no labels")
        return
    if y.dtype != torch.long or y.shape != (x.shape[0],):
        raise ValueError(f"{name}: y must be long [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UserError(
            f"{name}: labels span [{int(y.min())}, {int(y.max())}] but num_classes={num_classes}"
        )


def _check_noise(x: Tensor, noise: Tensor | None, name: str) -> None:
    if noise is not None and (noise.dtype != torch.float32 or noise.shape != x.shape):
        raise ValueError(f"{name}: noise must be float32 {list(x.shape)} like x, "
                         f"got {noise.dtype} {list(noise.shape)}")


def uint8_to_unit(images: np.ndarray, layout: str = "NHWC") -> Tensor:
    """Convert uint8 images to float32 [N, C, H, W] in [-1, 1].

    Formula: ``x = u / 127.5 - 1`` so that 0 -> -1 and 255 -> 1 (inverse: ``round((x + 1) * 127.5)``).

    Args:
        images: uint8 array [N, H, W, C], [N, H, W] (grayscale) or, with ``layout="NCHW"``,
            [N, C, H, W].
        layout: ``"NHWC"`` or ``"NCHW"``.

    Returns:
        float32 tensor [N, C, H, W].
    """
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None] if layout == "NCHW" else images[..., None]
    if layout == "NHWC":
        images = images.transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))  # a fresh, writable copy
    return x.div_(127.5).sub_(1.0)


def pad_images(x: Tensor, size: int | None, value: float = -1.0) -> Tensor:
    """Pad [N, C, H, W] images symmetrically to [N, C, size, size] with ``value`` (black by default).

    Used to put 28x28 (M)NIST digits on a 32x32 canvas for networks that need power-of-two sizes.
    ``size=None`` returns ``x`` unchanged.
    """
    if size is None:
        return x
    h, w = x.shape[-2:]
    if size < h or size < w:
        raise UserError(f"pad_to={size} is smaller than the images ({h}x{w})")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(x, (left, size - w - left, top, size - h - top), value=value)
