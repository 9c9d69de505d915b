"""The `latent_cache` dataset: VAE posteriors from `meanflow encode`, a fresh latent at every draw.

As the official MeanFlow (and DiT / LDM) code, training never sees a fixed latent: each time image i
is drawn, the loop gets

    z = scale * (mean_i + std_i * e),   e ~ N(0, I),   scale = 0.18215 (SD VAE)

from the stored posterior N(mean_i, std_i^2); with a cache of both flips, a fair coin picks the
image or its mirror first. The draws use torch's global generator, which the training loop reseeds
at every step from (seed, rank, step), so a resumed run sees the same latents. The shards stay
memory-mapped: only the rows of a batch are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from meanflow.errors import UserError


class PosteriorLatents:
    """The `x` of a latent cache: indexing with a batch of ids draws fresh, scaled latents.

    Args:
        means, stds: per-shard arrays [n_k, F, C, h, w] (memory-mapped), shard k holding images
            [k S, k S + n_k).
        shard_size: S.
        scale: latent scale factor (0.18215 for the SD VAE).
    """

    def __init__(self, means: list[np.ndarray], stds: list[np.ndarray], shard_size: int, scale: float):
        self.means, self.stds, self.shard_size, self.scale = means, stds, shard_size, float(scale)
        self.flips = int(means[0].shape[1])
        self.count = sum(len(m) for m in means)

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, C, h, w), like a tensor of N latents."""
        return (self.count, *self.means[0].shape[2:])

    def __len__(self) -> int:
        return self.count

    def posterior(self, index, flip: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mean, std) float32 [B, C, h, w] of images `index` [B] (version `flip` [B], default 0)."""
        idx = np.asarray(torch.as_tensor(index), dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError(f"latent cache index out of range [0, {self.count})")
        f = np.zeros(len(idx), np.int64) if flip is None else np.asarray(flip, np.int64)
        s, r = idx // self.shard_size, idx % self.shard_size
        mean = np.stack([self.means[a][b, c] for a, b, c in zip(s, r, f)]).astype(np.float32)
        std = np.stack([self.stds[a][b, c] for a, b, c in zip(s, r, f)]).astype(np.float32)
        return torch.from_numpy(mean), torch.from_numpy(std)

    def __getitem__(self, index) -> Tensor:
        """Fresh latents `scale * (mean + std * e)` of images `index` [B]: float32 [B, C, h, w]."""
        n = int(torch.as_tensor(index).numel())
        flip = torch.randint(self.flips, (n,)) if self.flips > 1 else None
        mean, std = self.posterior(index, flip)
        return self.scale * (mean + std * torch.randn(mean.shape))


@dataclass
class LatentCacheData:
    """A latent cache as a dataset (the fields the loop reads from `ImageData`).

    Attributes:
        x: `PosteriorLatents` (indexing draws latents [B, C, h, w]).
        y: long [N] class ids.
        num_classes: class folders of the encoded image folder.
        vae: the `VaeIdentity` the latents come from (recorded in checkpoints, checked at decoding).
    """

    x: PosteriorLatents
    y: Tensor
    num_classes: int
    name: str = "latent_cache"
    class_names: tuple[str, ...] | None = None
    is_latent: bool = True
    noise: None = None
    vae: object = None

    def __len__(self) -> int:
        return len(self.x)


def load_latent_cache(split: str = "train", data_dir: str | os.PathLike | None = None) -> LatentCacheData:
    """Open the cache folder `data_dir` written by `meanflow encode` (every shard must be complete)."""
    from meanflow.latent.cache import open_cache

    if data_dir is None:
        raise UserError("latent_cache: data.data_dir must be the cache folder written by `meanflow encode`")
    m, means, stds, labels = open_cache(data_dir)
    x = PosteriorLatents(means, stds, m.shard_size, m.vae.scale)
    return LatentCacheData(x=x, y=torch.from_numpy(labels), num_classes=len(m.classes), class_names=m.classes,
                           vae=m.vae)
