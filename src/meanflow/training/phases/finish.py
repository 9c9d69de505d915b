"""The finish phase: the end-of-run outputs, or the message of a run stopped early.

A run that reached `run.total` draws its final sample grid (also `samples.png`), evaluates a 2-D or
an 8x8 digits run (`metrics.json`), closes the log and plots it (`loss.png`). A run stopped by Ctrl-C
or `stop_at` has its checkpoint already; it only closes the log and says how to continue.

Touches: the run folder's final outputs, `run.logger` (closes it), `run.sample_net`. Reads the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from meanflow.training.phases.evaluate import digits_report, is_digits_run, toy_report
from meanflow.training.phases.samples import sample_grid

if TYPE_CHECKING:
    from meanflow.training.run_state import RunState


def finish(run: RunState) -> Path | None:
    """Final sample grid, evaluation and loss plot of a completed run; returns the run folder."""
    sample_grid(run, final=True)
    if len(run.parts.shape) == 1 and run.cfg.data.is_toy:
        toy_report(run)
    elif is_digits_run(run):
        digits_report(run)
    run.logger.close()
    if run.info.is_main:
        from meanflow.utils.plot import plot_loss

        run_dir = run.run_dir
        plotted = plot_loss(run_dir / "log.jsonl", run_dir / "loss.png", echo=run.echo)
        curve = f"; loss curve: {run_dir / 'loss.png'}" if plotted else ""
        run.echo(f"done: {run.total} steps. Samples: {run_dir / 'samples.png'}{curve}")
    return run.run_dir


def stopped_early(run: RunState) -> Path | None:
    """Close the log of a run stopped before its end (checkpoint written) and say how to resume."""
    if run.info.is_main:
        run.echo(f"stopped at step {run.step}; checkpoint written. "
                 f"Continue with: meanflow train --resume {run.run_dir}")
    run.logger.close()
    return run.run_dir
