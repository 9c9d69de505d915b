"""The run-folder phase: open the run's outputs, once everything is built and validated.

Rank 0 creates a new numbered run folder (or reuses the resumed checkpoint's, removing the temp files
a killed process left), writes the resolved config (`config.yaml`, `config.json`) and opens the log,
which drops the records the interrupted process wrote after its checkpoint, with its W&B sink when
`logging.wandb` is on (the same W&B run again when resuming). The other ranks get a log that writes
nothing.

Touches: `run.run_dir`, `run.logger` (creates both). Reads `run.cfg`, `run.start`, `run.total`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from meanflow.errors import UserError
from meanflow.training.checkpoint import Checkpoint, list_checkpoints, remove_stale_temps, run_dir_of
from meanflow.training.config_io import config_to_dict, config_to_yaml
from meanflow.training.run_log import Logger, write_atomic
from meanflow.training.rundir import next_run_dir
from meanflow.training.wandb_sink import WandbSink, check_wandb_settings

if TYPE_CHECKING:
    from meanflow.training.run_state import RunState


def open_run_folder(run: RunState, ckpt: Checkpoint | None) -> None:
    """Set `run.run_dir` (rank 0) and `run.logger`, and say what the run will do."""
    cfg, lc, echo = run.cfg, run.cfg.logging, run.echo
    if lc.wandb and run.info.is_main:
        check_wandb_settings(lc)  # installed, credentials for online mode: before any run folder
    if run.info.is_main:
        run.run_dir = make_run_dir(ckpt, lc.out_dir, cfg.describe())
        try:
            write_atomic(run.run_dir / "config.yaml", config_to_yaml(cfg))
            write_atomic(run.run_dir / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")
        except OSError as e:
            if ckpt is None:
                shutil.rmtree(run.run_dir, ignore_errors=True)
            raise UserError(f"cannot write the config into run folder {run.run_dir}: "
                            f"{e.strerror or e}") from None
        echo(f"run folder: {run.run_dir}")
        echo(f"{len(run.parts.data)} training samples of shape {list(run.parts.shape)}, {run.parts.classes} "
             f"classes; {sum(p.numel() for p in run.net.parameters()) / 1e6:.2f}M parameters; "
             f"{run.info.world_size} process(es) on {run.device.type}; steps {run.start} -> {run.total}")
    sink = None
    if lc.wandb and run.info.is_main:
        sink = WandbSink(run.run_dir, lc, config_to_dict(cfg), resuming=ckpt is not None)
    run.logger = Logger(run.run_dir, lc.tensorboard, run.start, final=run.start == run.total, wandb=sink)
    if run.info.is_main and run.start == run.total:
        echo(f"checkpoint is at the last step ({run.total}): writing the final outputs only (raise "
             "training.steps to train longer)")


def make_run_dir(ckpt: Checkpoint | None, out_dir: str, desc: str) -> Path:
    """The run folder: the resumed checkpoint's (stale temp files removed), else a new numbered one."""
    run_dir = run_dir_of(ckpt.path) if ckpt is not None else None
    try:
        if run_dir is not None:
            remove_stale_temps(run_dir)
            return run_dir
        return next_run_dir(out_dir, desc)
    except FileExistsError:
        raise UserError(f"cannot create a run folder in {out_dir}: it is a file, not a folder") from None
    except OSError as e:
        where = run_dir or out_dir
        raise UserError(f"cannot create a run folder in {where}: {e.strerror or e}") from None


@contextlib.contextmanager
def discarded_on_failure(run: RunState, fresh: bool):
    """On an error before the run's first checkpoint, remove the new run folder (rank 0), then re-raise.

    A run folder exists only while it holds something to resume from: an error in a fresh run (bad
    data found late, a full disk, non-finite loss at step 3, a second Ctrl-C) leaves no folder with a
    config and a few log lines that `--resume` cannot use. A resumed run's folder, and any run that has
    written a checkpoint, is kept as it is (the checkpoint is the last good state).
    """
    try:
        yield
    except BaseException:
        run_dir = run.run_dir
        if fresh and run.info.is_main and run_dir is not None and not list_checkpoints(run_dir):
            if run.logger is not None:
                with contextlib.suppress(Exception):
                    run.logger.close()  # TensorBoard / W&B writers hold files in the folder
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
