"""Weights & Biases as a sink of the run's log (``logging.wandb=true``; optional: ``pip install wandb`` or
the ``[wandb]`` extra).

Rank 0 only, like ``log.jsonl``. At the start the resolved config goes to ``wandb.config``; every record
of the log goes to ``wandb.log`` at its step (numbers only), every sample grid as a ``wandb.Image``; the
W&B run id is kept in the run folder (``wandb-run-id``) so that ``--resume`` continues the same W&B run
(``resume="allow"``) instead of opening a new one. ``logging.wandb_mode=offline`` writes the run under
``RUN/wandb/`` without network (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from meanflow.errors import UserError

ID_FILE = "wandb-run-id"
MODES = ("online", "offline", "disabled")


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise UserError('logging.wandb=true needs wandb: pip install wandb (or the [wandb] extra)') from None
    return wandb


def check_wandb_settings(lc) -> None:
    """One-line UserErrors before any run folder exists: W&B not installed, or online mode without
    credentials (W&B would otherwise ask for them interactively)."""
    wandb = _import_wandb()
    if lc.wandb_mode == "online" and not (os.environ.get("WANDB_API_KEY") or _stored_key(wandb)):
        raise UserError("logging.wandb_mode=online needs W&B credentials (wandb login, or WANDB_API_KEY); "
                        "or set logging.wandb_mode=offline and `wandb sync` the run later")


def _stored_key(wandb) -> bool:
    """Whether `wandb login` stored an API key (netrc) — without contacting the server."""
    try:
        return bool(wandb.Api().api_key)  # reads settings / netrc only
    except Exception:
        return False


class WandbSink:
    """One W&B run fed from the training log.

    Args:
        run_dir: the run folder (the W&B files go to ``run_dir / "wandb"``; the id to ``wandb-run-id``).
        lc: the logging config (``wandb_project``, ``wandb_entity``, ``wandb_name``, ``wandb_mode``).
        config: the resolved config as a dict (``wandb.config``).
        resuming: continue the W&B run whose id the folder holds, when it holds one.
    """

    def __init__(self, run_dir: Path, lc, config: dict[str, Any], resuming: bool) -> None:
        wandb = _import_wandb()
        self.wandb = wandb
        id_path = run_dir / ID_FILE
        run_id = id_path.read_text().strip() if resuming and id_path.is_file() else None
        try:
            self.run = wandb.init(
                project=lc.wandb_project, entity=lc.wandb_entity, name=lc.wandb_name or run_dir.name,
                dir=str(run_dir), config=config, mode=lc.wandb_mode, id=run_id,
                resume="allow" if run_id else None, reinit="create_new")
        except Exception as exc:  # network, credentials, a bad entity: one line
            raise UserError(f"cannot start W&B ({lc.wandb_mode}): {str(exc).splitlines()[0][:200]}") from None
        if run_id is None and self.run is not None:
            id_path.write_text(self.run.id + "\n")

    def log(self, record: dict[str, Any]) -> None:
        """The numbers of a log record at its ``step``."""
        data = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if data:
            self.run.log(data, step=int(record["step"]))

    def image(self, key: str, path: Path, step: int) -> None:
        """A sample grid (PNG file) at ``step``."""
        self.run.log({key: self.wandb.Image(str(path))}, step=int(step))

    def close(self) -> None:
        self.run.finish()
