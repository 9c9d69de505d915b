"""The log phase: average the step metrics since the last record and write one record.

Touches: `run.meter` (owns it: the step results are added, a record resets it), `run.guard` (reads
the non-finite flags back on a GPU schedule; takes the skipped-step count), `run.logger` (writes).
Reads `run.step`, `run.device`. The averages are all-reduced over the ranks (a collective: every
rank calls `write_record` at the same steps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from meanflow.training import distributed

if TYPE_CHECKING:
    from meanflow.training.run_state import RunState


@dataclass
class StepResult:
    """What one optimizer step reports (on the device: no host sync)."""

    metrics: dict[str, Tensor]
    """The method's metrics, 0-dim float32, averaged over the micro-batches (plus ``grad_norm``)."""
    ok: Tensor
    """0-dim: 1.0 when the step was applied, 0.0 when the non-finite guard dropped it."""
    lr: float
    """The learning rate of the step."""


class StepMeter:
    """Sums of the step metrics since the last log record; skipped steps stay out of the means.

    ``sums[k] = sum_s ok_s m_k,s``, ``good = sum_s ok_s`` (0-dim tensors on the device), ``count`` the
    steps (applied or not) and ``t_last`` the clock at the last record, for ``sec_per_step``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.sums: dict[str, Tensor] = {}
        self.good = torch.zeros((), device=self.device)  # finite steps summed into `sums`
        self.count = 0
        self.t_last = now
        self.lr = float("nan")

    def add(self, result: StepResult) -> None:
        """Count one step; its metrics enter the sums only if it was applied (``ok``)."""
        self.count += 1
        for k, v in result.metrics.items():
            self.sums[k] = self.sums.get(k, 0) + torch.where(result.ok > 0, v, torch.zeros_like(v))
        self.good = self.good + result.ok
        self.lr = result.lr


def write_record(run: RunState, bar=None) -> None:
    """Write the record of step `run.step`: the means since the last record over the applied steps
    of every rank, ``lr``, ``sec_per_step`` and ``skipped_steps`` (when any); show the loss on `bar`."""
    if not run.check_each_step:
        run.guard.check(run.last_ckpt)
    meter = run.meter
    names = sorted(meter.sums)
    vals = distributed.all_reduce_mean(torch.stack([meter.sums[k] for k in names] + [meter.good]))
    n_good = float(vals[-1])
    now = time.perf_counter()
    means = {k: float(v) / n_good for k, v in zip(names, vals)} if n_good else {}
    rec = {"step": run.step, **means, "lr": meter.lr, "sec_per_step": (now - meter.t_last) / meter.count}
    skipped = run.guard.take_skipped()
    if skipped:
        rec["skipped_steps"] = skipped
    meter.reset(now)
    run.logger.write(rec)
    if bar is not None and n_good:
        shown = "mse" if "mse" in rec else "loss"
        bar.set_postfix({shown: f"{rec.get(shown, float('nan')):.4g}"}, refresh=False)


def start_progress(run: RunState):
    """Start the clock of the first record's ``sec_per_step`` and return rank 0's tqdm bar from
    `run.start` to `run.total` (None off rank 0 or with ``logging.progress=false``)."""
    bar = None
    if run.info.is_main and run.cfg.logging.progress:
        from tqdm import tqdm

        bar = tqdm(total=run.total, initial=run.start, dynamic_ncols=True, desc="train", leave=True)
    run.meter.reset(time.perf_counter())
    return bar
