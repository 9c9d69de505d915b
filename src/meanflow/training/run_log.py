"""The run's scalar log: `log.jsonl` (one JSON record per line), TensorBoard when installed, and W&B with
`logging.wandb=true` (`meanflow.training.wandb_sink`).

Written by rank 0 only. A record is ``{"step": s, "<metric>": float, ...}``; the end-of-run
evaluation writes ``{"step": s, "eval/<metric>": float, ...}``. Resuming from the checkpoint at
step ``start`` first drops what the interrupted process wrote after it, so the log holds each step
once however often the run was killed and resumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meanflow.errors import UserError
from meanflow.utils.files import atomic_files


class Logger:
    """Scalars to JSONL (and TensorBoard when installed), rank 0 only.

    Resuming from step `start` first drops the records past `start` that the interrupted run wrote
    after its last checkpoint (with `final`, a run that only redoes its final phase, also the end-of-run
    evaluation records at `start`) (JSONL rewritten atomically; TensorBoard through `purge_step`), so the
    log holds every step once.
    """

    def __init__(self, run_dir: Path | None, tensorboard: bool, start: int = 0, final: bool = False,
                 wandb=None) -> None:
        self.path = None if run_dir is None else run_dir / "log.jsonl"
        self.tb = None
        self.wandb = wandb  # a `WandbSink` (logging.wandb=true, rank 0) or None
        if self.path is not None and start > 0:
            truncate_log(self.path, start, drop_evals=final)
        if run_dir is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1 if start else None)
            except Exception:  # tensorboard not installed: JSONL only
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` (it must hold ``"step"``); numbers also go to TensorBoard."""
        if self.path is None:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise UserError(f"cannot write the training log {self.path}: {e.strerror or e}") from None
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])
        if self.wandb is not None:
            self.wandb.log(record)

    def image(self, key: str, path: Path, step: int) -> None:
        """A sample grid written at `step` (W&B only: the PNG itself is in the run folder)."""
        if self.wandb is not None:
            self.wandb.image(key, path, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None


def truncate_log(path: Path, start: int, drop_evals: bool = False) -> None:
    """Keep the records of `path` up to step `start` (and drop a torn last line); with `drop_evals`,
    drop the `eval/` records at step `start` too."""
    if not path.is_file():
        return
    keep, dropped = [], False
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped = True
            continue
        step = rec.get("step") if isinstance(rec, dict) else None
        is_eval = isinstance(rec, dict) and any(str(k).startswith("eval/") for k in rec)
        if isinstance(step, int) and (step > start or (drop_evals and step == start and is_eval)):
            dropped = True
            continue
        keep.append(line)
    if dropped:
        write_atomic(path, "".join(x + "\n" for x in keep))


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same folder (OSError on failure)."""
    with atomic_files(user_errors=False) as files:
        files.tmp(path).write_text(text)
