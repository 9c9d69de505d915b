"""An infinite, seeded, shardable and exactly resumable stream of index batches.

Global stream: epoch ``e`` visits ``perm_e = default_rng([seed, e]).permutation(n)``. Each step
takes the next ``batch_size * world_size`` positions of ``perm_e``; rank ``r`` gets the slice
``[r * batch_size, (r + 1) * batch_size)``. When fewer positions than one global batch remain,
they are skipped and epoch ``e + 1`` starts, so within a step the ranks' indices are disjoint and
within an epoch no index repeats. Every permutation is a pure function of (seed, epoch), so
``(epoch, position)`` is the whole state: saving and restoring it resumes the exact stream,
even under a different world size (the position counts global samples, not steps).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from meanflow.data.types import ImageData, PointData
from meanflow.errors import UserError


class InfiniteSampler:
    """Yields this rank's index batches forever: ``next(sampler) -> long tensor [batch_size]``.

    Args:
        n: dataset size.
        batch_size: indices per rank per step.
        seed: non-negative seed of the shuffling (same on every rank).
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes drawing from the same stream.
        shuffle: False visits ``0..n-1`` in order every epoch (for debugging).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if n < 1 or batch_size < 1 or seed < 0:
            raise UserError(
                f"sampler needs n >= 1, batch_size >= 1, seed >= 0 (got {n}, {batch_size}, {seed})"
            )
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside [0, world_size={world_size})")
        if batch_size * world_size > n:
            raise UserError(f"batch size {batch_size} x world size {world_size} exceeds the dataset size {n}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch = 0
        self.position = 0
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def global_batch(self) -> int:
        """Indices drawn by all ranks together in one step."""
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Full steps in one epoch (the last ``n % global_batch`` positions are skipped)."""
        return self.n // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        """The global visiting order of ``epoch``: int64 [n]."""
        if not self.shuffle:
            return np.arange(self.n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return self._perm[1]

    def __iter__(self) -> InfiniteSampler:
        return self

    def __next__(self) -> Tensor:
        if self.position + self.global_batch > self.n:
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position + self.rank * self.batch_size
        out = self.permutation(self.epoch)[start:start + self.batch_size]
        self.position += self.global_batch
        return torch.from_numpy(out.astype(np.int64))

    def state_dict(self) -> dict:
        """``{"epoch", "position", "seed", "n"}``: everything needed to resume the stream."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`; the dataset size and seed must match."""
        if state.get("n") != self.n or state.get("seed") != self.seed:
            raise UserError(
                f"sampler state is for n={state.get('n')}, seed={state.get('seed')} but this run has "
                f"n={self.n}, seed={self.seed}; resume with the same dataset and seed"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.n:
            raise UserError(f"sampler state has an invalid epoch/position ({epoch}, {position})")
        self.epoch, self.position = epoch, position


class Batch(NamedTuple):
    """One batch of :meth:`BatchLoader.next_batch`.

    Attributes:
        x: Data ``[B, *S]``.
        y: Class ids, long ``[B]``, or None (unlabelled).
        noise: The noise coupled with ``x`` ``[B, *S]`` (pairs data), or None.
    """

    x: Tensor
    y: Tensor | None
    noise: Tensor | None


class BatchLoader:
    """Infinite ``(x, y)`` batches of an in-memory dataset, drawn by an :class:`InfiniteSampler`.

    ``next(loader)`` returns ``x`` [batch_size, *S] and ``y`` long [batch_size] (or None when the
    dataset is unlabelled), moved to ``device``; :meth:`next_batch` returns the same draw as a
    :class:`Batch` that also holds the rows of ``data.noise`` (coupled pairs), or None.
    """

    def __init__(self, data: ImageData | PointData, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, device: torch.device | str | None = None, shuffle: bool = True):
        self.data, self.device = data, device
        self.sampler = InfiniteSampler(len(data), batch_size, seed=seed, rank=rank, world_size=world_size,
                                       shuffle=shuffle)

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> tuple[Tensor, Tensor | None]:
        b = self.next_batch()
        return b.x, b.y

    def next_batch(self) -> Batch:
        """The next draw: rows ``i`` of ``x``, ``y`` and (when the data has it) ``noise``."""
        i = next(self.sampler)
        y, noise = self.data.y, getattr(self.data, "noise", None)
        rows = (self.data.x[i], None if y is None else y[i], None if noise is None else noise[i])
        if self.device is not None:
            rows = tuple(None if r is None else r.to(self.device, non_blocking=True) for r in rows)
        return Batch(*rows)

    def state_dict(self) -> dict:
        """The sampler's state (see :meth:`InfiniteSampler.state_dict`)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Resume the sampler's stream."""
        self.sampler.load_state_dict(state)
