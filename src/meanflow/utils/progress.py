"""Progress bars (tqdm on stderr) for long generation, solving and likelihood work.

A bar appears only once its work has lasted `DELAY` seconds, so quick commands print nothing extra.
`progress=None` is "auto": a bar only when stderr is a terminal and this is rank 0 (what library
callers such as the training loop's sample grids get); True / False force it on or off.

`NetProgress` counts a network's forward calls (network evaluations, NFE) during sampling, so that a
sampler of 1000 steps over one batch (Score SDE) moves its bar at every step rather than once.
"""

from __future__ import annotations

import os
import sys

DELAY = 1.0
"""Seconds of work before a bar is drawn."""


def progress_enabled(progress: bool | None) -> bool:
    """Whether to draw a bar: `progress` itself, or for None, stderr is a terminal and this is rank 0."""
    if progress is not None:
        return bool(progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(total: int | None, desc: str, unit: str, progress: bool | None = None):
    """A tqdm bar (drawn after `DELAY` seconds, erased when closed), or None when disabled."""
    if not progress_enabled(progress):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, delay=DELAY, leave=False, dynamic_ncols=True)


class NetProgress:
    """A bar over the network evaluations of `batches` batches of sampling with `net`.

    The total starts as `steps` evaluations a batch (one per step; left open once the first batch
    passes it, as a sampler with a corrector or Heun's method does); after the first batch it is
    `batches` times what that batch took. A sampler that never calls `net` as a module (no forward
    hook fires) moves the bar once per batch instead. Use as a context manager and call
    `batch_done()` after each batch.
    """

    def __init__(self, net, batches: int, desc: str = "sample", progress: bool | None = None,
                 steps: int | None = None) -> None:
        self.batches, self.done = batches, 0
        self.bar = progress_bar(None if steps is None else steps * batches, desc, "NFE", progress)
        self.handle = None
        if self.bar is not None and hasattr(net, "register_forward_pre_hook"):
            self.handle = net.register_forward_pre_hook(self._tick)

    def _tick(self, module, args) -> None:
        if self.done == 0 and self.bar.total is not None and self.bar.n >= self.bar.total:
            self.bar.total = None  # more evaluations a step than guessed: open until the batch ends
        self.bar.update(1)

    def batch_done(self) -> None:
        """Mark one batch finished."""
        if self.bar is None:
            return
        self.done += 1
        if self.done == 1:
            if self.bar.n == 0:  # no hook fired: count batches
                self.bar.unit, self.handle = "batch", self._remove()
                self.bar.update(1)
            self.bar.total = self.bar.n * self.batches  # drawn at the next update (no refresh: the
            # bar stays hidden until `DELAY` has passed)
        elif self.handle is None:
            self.bar.update(1)

    def _remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()

    def __enter__(self) -> NetProgress:
        return self

    def __exit__(self, *exc) -> None:
        self._remove()
        if self.bar is not None:
            self.bar.close()
