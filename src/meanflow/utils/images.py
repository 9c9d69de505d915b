"""Image grids and PNG files.

Images inside the library are float tensors in [-1, 1], shape [B, C, H, W]; files hold uint8.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] -> uint8 [B, H, W, C], `round((x + 1) * 127.5)` clipped to [0, 255]."""
    x = x.detach().to("cpu", torch.float32)
    x = torch.clamp(torch.round((x + 1.0) * 127.5), 0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1, pad_value: int = 0) -> np.ndarray:
    """Tile uint8 images [B, H, W, C] into one uint8 image [rows*(H+pad)+pad, ..., C].

    Args:
        images: uint8 array [B, H, W, C] (C = 1 or 3).
        ncol: images per row (default: ceil(sqrt(B)), a square grid for square B).
        pad: pixels between tiles.
    """
    b, h, w, c = images.shape
    ncol = ncol or max(1, math.ceil(math.sqrt(b)))
    nrow = max(1, math.ceil(b / ncol))
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def png_image(image: np.ndarray, scale: int = 1) -> Image.Image:
    """uint8 [H, W, C] (C = 1 or 3) as a PIL image, upscaled `scale` times with nearest neighbour."""
    arr = image[..., 0] if image.shape[-1] == 1 else image
    img = Image.fromarray(np.ascontiguousarray(arr))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_png(image: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Write uint8 [H, W, C] (C = 1 or 3) as PNG, upscaled `scale` times with nearest neighbour so
    that small images (8x8 digits) stay sharp. Written atomically (temp file + os.replace; the temp
    is removed if writing fails, and the OSError propagates)."""
    from meanflow.utils.files import atomic_files

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = png_image(image, scale)
    with atomic_files(user_errors=False) as files:
        img.save(files.tmp(path), format="PNG")
    return path


def auto_scale(height: int, target: int = 48) -> int:
    """Integer nearest-neighbour upscale that brings a tile of `height` pixels to about `target`."""
    return max(1, round(target / max(1, height)))


def save_grid(x: torch.Tensor, path: str | Path, ncol: int | None = None) -> Path:
    """[B, C, H, W] in [-1, 1] -> PNG grid, upscaled so that each tile is roughly 48 px high."""
    imgs = to_uint8(x)
    return save_png(make_grid(imgs, ncol=ncol), path, scale=auto_scale(imgs.shape[1]))


def points_image(points: torch.Tensor, size: int = 512, extent: float = 4.5,
                 reference: torch.Tensor | None = None) -> np.ndarray:
    """Scatter plot of 2-D points [N, 2] as uint8 [size, size, 3] (no plotting library needed).

    Points are white on black inside the square [-extent, extent]^2; `reference` points, when given,
    are drawn first in dark blue.
    """
    canvas = np.zeros((size, size, 3), dtype=np.uint8)

    def draw(p: torch.Tensor, colour: tuple[int, int, int]) -> None:
        p = p.detach().to("cpu", torch.float64).numpy()
        ij = np.round((p + extent) / (2 * extent) * (size - 1)).astype(np.int64)
        keep = (ij >= 0).all(1) & (ij < size).all(1)
        ij = ij[keep]
        canvas[size - 1 - ij[:, 1], ij[:, 0]] = colour

    if reference is not None:
        draw(reference, (40, 60, 140))
    draw(points, (255, 255, 255))
    return canvas


def save_points(points: torch.Tensor, path: str | Path, size: int = 512, extent: float = 4.5,
                reference: torch.Tensor | None = None) -> Path:
    """Scatter plot of 2-D points [N, 2] as a PNG (see `points_image`), written atomically."""
    return save_png(points_image(points, size, extent, reference), path)
