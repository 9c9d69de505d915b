"""The step phase: one optimizer step, from the next batch to the updated weights, EMAs and target.

For step s (0-based) on rank k:

    seed torch's global RNG with step_seed(seed, k, s)     # noise, times, dropout: exact on resume
    lr = lr_at(s, lr, warmup, lr_decay_steps)             # warm-up, then constant or 1/sqrt decay
    batch = the next [batch_size / world_size] rows        # augmented with its own seeded generator
    for each of the grad_accum micro-batches:              # DDP all-reduces on the last one only
        loss_i = method.loss(ddp_net, x_i, y_i, **context) # context: what the method declares
        backward(loss_i / grad_accum)
    apply_update(sum_i loss_i, ...)                        # norm, guard, optimizer, EMAs, target

Touches: `run.step` (advances it), the state of `run.loader`, `run.net` (gradients, weights),
`run.optimizer`, `run.ema`, `run.target`, `run.guard` (through `apply_update`), torch's global RNG.
Reads the rest. On the CPU the guard's flags are read back here after every step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from meanflow.methods.base import Progress
from meanflow.training.phases.log import StepResult
from meanflow.training.phases.update import apply_update
from meanflow.training.schedule import lr_at, step_seed

if TYPE_CHECKING:
    from meanflow.training.run_state import RunState

AUGMENT_STREAM = 0xA06
"""Offset of the training seed for the augmentation generator's stream (independent of the global
stream that noise, times and dropout draw from)."""


def train_step(run: RunState) -> StepResult:
    """Take optimizer step `run.step` and advance `run.step` by one (see the module docstring)."""
    tc = run.cfg.training
    torch.manual_seed(step_seed(tc.seed, run.info.rank, run.step))
    lr = lr_at(run.step, tc.lr, run.warmup, tc.lr_decay_steps)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    batch = next_batch(run)
    progress = Progress(run.step, run.total)
    context = training_context(run.needs, progress, run.target, run.teacher)
    loss_sum, metrics = forward_backward(run, batch, context)
    skip, gnorm = apply_update(run.net, run.optimizer, tc.grad_clip, run.guard, loss_sum, run.step, run.ema,
                               run.target, run.parts.method, progress)
    if tc.grad_clip is not None:
        metrics["grad_norm"] = gnorm.detach().float()
    run.step += 1
    ok = 1.0 - skip
    if run.check_each_step:
        run.guard.check(run.last_ckpt)
    return StepResult(metrics, ok, lr)


@dataclass
class StepBatch:
    """One step's rows on the device: ``x [b, *S]``, ``y [b]`` (None when unconditional), the stored
    ``noise [b, *S]`` of pairs data and the ``augment_labels [b, L]`` of an augmenting run (else None)."""

    x: Tensor
    y: Tensor | None
    noise: Tensor | None
    augment_labels: Tensor | None

    def micro(self, i: int, size: int) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
        """Micro-batch `i` of `size` rows: ``(x, y, extra)``, `extra` the keywords of `method.loss`
        it brings (``net_kwargs`` only for an augmenting run: a method may not take them otherwise;
        ``noise`` only on pairs data: the coupled noise replaces the method's fresh draw)."""
        rows = slice(i * size, (i + 1) * size)
        y = None if self.y is None else self.y[rows]
        extra: dict[str, Any] = {}
        if self.augment_labels is not None:
            extra["net_kwargs"] = {"augment_labels": self.augment_labels[rows]}
        if self.noise is not None:
            extra["noise"] = self.noise[rows]
        return self.x[rows], y, extra


def next_batch(run: RunState) -> StepBatch:
    """The step's rows from the loader, moved to the device and augmented (own generator, reseeded
    per step like every other draw: exact on resume)."""
    batch = run.loader.next_batch()
    x = batch.x.to(run.device)
    y = batch.y.to(run.device) if (batch.y is not None and run.parts.classes) else None
    noise = None if batch.noise is None else batch.noise.to(run.device)
    labels = None
    if run.augment is not None:
        tc = run.cfg.training
        gen = torch.Generator().manual_seed(step_seed(tc.seed + AUGMENT_STREAM, run.info.rank, run.step))
        x, labels = run.augment(x, gen)
    return StepBatch(x, y, noise, labels)


def forward_backward(run: RunState, batch: StepBatch,
                     context: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss and gradients of the step, accumulated over ``training.grad_accum`` micro-batches.

    Returns ``(loss_sum, metrics)``: the sum of the micro-batch losses (0-dim float32, what the guard
    judges) and each metric's mean over the micro-batches (0-dim float32 on the device).
    """
    tc = run.cfg.training
    metrics: dict[str, Tensor] = {}
    loss_sum = torch.zeros((), device=run.device)
    for i in range(tc.grad_accum):
        x, y, extra = batch.micro(i, run.micro)
        last = i == tc.grad_accum - 1
        sync = contextlib.nullcontext() if (last or run.ddp_net is run.net) else run.ddp_net.no_sync()
        with sync:
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
                out = run.parts.method.loss(run.ddp_net, x, y, **extra, **context)
            (out.loss / tc.grad_accum).backward()
        loss_sum = loss_sum + out.loss.detach().float()
        for k, v in out.metrics.items():
            v = torch.as_tensor(v, dtype=torch.float32).detach().to(run.device)
            metrics[k] = metrics.get(k, 0) + v / tc.grad_accum
    return loss_sum, metrics


def training_context(needs: frozenset[str], progress: Progress, target, teacher) -> dict[str, Any]:
    """The keywords of `method.loss` beyond the batch: exactly what the method declared. Built once
    per step, so every micro-batch of a step sees the same `progress` and target."""
    have = {"progress": progress, "target": None if target is None else target.net, "teacher": teacher}
    return {k: have[k] for k in needs}
