"""The training loop. It knows no method: it calls `method.loss(net, x, y)` and `method.sample`.
On pairs data (a dataset with a `noise` tensor) it passes each sample's stored noise as `noise=`.

    run_dir = train(resolve_config("digits"))

Runs alone (rank 0 of 1) or under torchrun (see `distributed`). Every random draw of step s on rank
k comes from a generator reseeded with (seed, k, s), and the data order is a pure function of
(seed, epoch), so stopping at step N and resuming gives bit-identical weights on the CPU.

`_train` is the algorithm; each line is a phase of `meanflow.training.phases` working on one
`RunState` (see `docs/design.md` for what each phase owns, reads and writes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch

from meanflow.training import distributed
from meanflow.training.build import Parts, build_parts, resolve_device
from meanflow.training.config import Config
from meanflow.training.phases.build import build_run, micro_batch_size
from meanflow.training.phases.finish import finish, stopped_early
from meanflow.training.phases.interrupt import StopFlag
from meanflow.training.phases.log import start_progress
from meanflow.training.phases.periodic import periodic_work
from meanflow.training.phases.resume import RESUMABLE_CHANGES, check_resumable, open_checkpoint, resume_run
from meanflow.training.phases.run_folder import discarded_on_failure, open_run_folder
from meanflow.training.phases.step import AUGMENT_STREAM, train_step
from meanflow.training.phases.update import apply_update, build_optimizer, optimizer_step
from meanflow.training.run_log import truncate_log
from meanflow.training.run_state import RunState

# Kept importable from here, where they used to live (code and tests import them from `loop`).
__all__ = ["AUGMENT_STREAM", "CHECK_EACH_STEP", "RESUMABLE_CHANGES", "Parts", "apply_update",
           "build_optimizer", "build_parts", "check_resumable", "optimizer_step", "resolve_device", "train"]
_truncate_log = truncate_log

CHECK_EACH_STEP: bool | None = None
"""Read the non-finite guard's flags back after every step (None: on the CPU, where it is free; not on
a GPU, where the loop checks at its own sync points). Tests set False to run the GPU schedule on a CPU."""


def train(cfg: Config, *, resume: str | Path | None = None, stop_at: int | None = None,
          parts: Parts | None = None, echo: Callable[[str], None] = print,
          raise_on_interrupt: bool = False) -> Path | None:
    """Train `cfg`; return the run folder on rank 0 (None on other ranks).

    Args:
        cfg: the resolved, validated config.
        resume: a run folder or checkpoint to continue from (its config must match `cfg` up to
            `RESUMABLE_CHANGES`).
        stop_at: stop after this step as if interrupted (writes a checkpoint); for tests.
        parts: prebuilt dataset / network / method (default: `build_parts(cfg)`).
        echo: where rank 0's one-line messages go.
        raise_on_interrupt: after a Ctrl-C stop (checkpoint written, message printed) raise
            KeyboardInterrupt instead of returning, so that the CLI exits 130.
    """
    device = resolve_device(cfg.training.device)
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    owns_group = not torch.distributed.is_initialized()
    info = distributed.init(device.type)
    try:
        return _train(cfg, info, device, resume, stop_at, parts, echo, raise_on_interrupt=raise_on_interrupt)
    finally:
        if owns_group:
            distributed.shutdown()


def _train(cfg: Config, info: distributed.DistInfo, device: torch.device, resume, stop_at, parts,
           echo, *, raise_on_interrupt: bool = False) -> Path | None:
    """Build, resume, then optimizer steps each followed by its periodic work, then finish.

    Everything that can fail on input fails before `open_run_folder`, so a bad config leaves nothing.
    """
    micro = micro_batch_size(cfg.training, info.world_size)  # the batch splits over ranks and rounds
    ckpt = open_checkpoint(resume, cfg)  # None, or a checkpoint of this config
    run = build_run(cfg, info, device, micro, ckpt, parts, echo, check_each_step=CHECK_EACH_STEP)
    if ckpt is not None:
        resume_run(run, ckpt)  # EMAs, target, optimizer, data order and step of the checkpoint
    with discarded_on_failure(run, fresh=ckpt is None):  # an error before any checkpoint leaves no folder
        open_run_folder(run, ckpt)  # rank 0: run folder, config files, log
        return _steps_then_finish(run, stop_at, raise_on_interrupt)


def _steps_then_finish(run: RunState, stop_at: int | None, raise_on_interrupt: bool) -> Path | None:
    """Optimizer steps, each followed by its periodic work; then the finish (or the early stop)."""
    bar = start_progress(run)
    run.net.train()
    # The bar is closed (its line ended) before any error message is printed.
    with StopFlag() as flag, contextlib.closing(bar) if bar is not None else contextlib.nullcontext():
        while run.step < run.total:
            result = train_step(run)  # batch, forward, backward, non-finite guard, update, EMAs, target
            stop = periodic_work(run, result, bar, flag, stop_at)  # log, sample grid, checkpoint
            if stop and run.step < run.total:
                break
    if run.step < run.total:
        stopped_early(run)  # Ctrl-C or stop_at: the checkpoint is written, say how to resume
        if flag.requested and raise_on_interrupt:
            raise KeyboardInterrupt  # the CLI's exit status 130
        return run.run_dir
    return finish(run)  # final sample grid, 2-D evaluation, loss plot
