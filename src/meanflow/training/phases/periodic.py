"""The periodic work after each optimizer step, in this order:

    log record         every logging.log_every steps and at the last step
    progress bar       one tick (rank 0)
    replica check      every training.replica_check_every steps under DDP (stops on drift)
    sample grid        every logging.sample_every steps before the last
    stop decision      Ctrl-C on any rank, or `stop_at` reached
    checkpoint         every training.checkpoint_every steps, at the last step, and when stopping

Every rank runs the same schedule (the log's all-reduce, the stop decision and the checkpoint's
gathers are collectives). Touches only what the phases it calls touch; reads `run.step`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meanflow.training import distributed
from meanflow.training.phases.log import StepResult, write_record
from meanflow.training.phases.samples import sample_grid
from meanflow.training.phases.save import write_checkpoint

if TYPE_CHECKING:
    from meanflow.training.phases.interrupt import StopFlag
    from meanflow.training.run_state import RunState


def periodic_work(run: RunState, result: StepResult, bar, flag: StopFlag, stop_at: int | None) -> bool:
    """Do what is due after the step that brought the run to `run.step`; True when the run must stop
    (a checkpoint is written then)."""
    tc, lc, step = run.cfg.training, run.cfg.logging, run.step
    run.meter.add(result)
    if step % lc.log_every == 0 or step == run.total:
        write_record(run, bar)
    if bar is not None:
        bar.update(1)
    if run.info.enabled and not run.sharded and step % tc.replica_check_every == 0:
        distributed.check_replicas(run.net)
    if step % lc.sample_every == 0 and step < run.total:
        sample_grid(run)
    stop = distributed.any_rank(flag.requested, run.device) or (stop_at is not None and step >= stop_at)
    if step % tc.checkpoint_every == 0 or step == run.total or stop:
        write_checkpoint(run)
    return stop
