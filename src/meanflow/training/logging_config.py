"""The `logging` section of a run's config: outputs (run folder, log cadence, sample grids, progress,
TensorBoard, Weights & Biases)."""

from __future__ import annotations

from dataclasses import dataclass

from meanflow.errors import require as _check
from meanflow.limits import MAX_GRID, MAX_STEPS


@dataclass
class LoggingConfig:
    out_dir: str = "runs"
    """Parent folder of the numbered run folders (runs/00000-<desc>/)."""
    log_every: int = 50
    """Write scalars (JSONL, TensorBoard) every this many steps."""
    sample_every: int = 1000
    """Write a grid of samples every this many steps (and at the end)."""
    sample_count: int = 100
    """Samples in each grid (a square number gives a square grid)."""
    sample_steps: int | None = None
    """Sampling steps of the grids (None: the method's own `default_steps`, 1 for the one-step methods,
    50 for flow matching)."""
    tensorboard: bool = True
    """Also write TensorBoard scalars when tensorboard is installed."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""
    wandb: bool = False
    """Also log to Weights & Biases (scalars, sample grids, the resolved config; `pip install wandb`)."""
    wandb_project: str = "meanflow"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity (user or team; None: the default of the credentials)."""
    wandb_name: str | None = None
    """W&B run name (None: the run folder's name)."""
    wandb_mode: str = "online"
    """'online', 'offline' (files under RUN/wandb/, `wandb sync` later) or 'disabled'."""

    def __post_init__(self) -> None:
        _check(self.wandb_mode in ("online", "offline", "disabled"),
               f"logging.wandb_mode must be online, offline or disabled, got {self.wandb_mode!r}")
        _check(self.log_every > 0, "logging.log_every must be > 0")
        _check(self.sample_every > 0, "logging.sample_every must be > 0")
        _check(0 < self.sample_count <= MAX_GRID, f"logging.sample_count must be in [1, {MAX_GRID}] (a grid "
               f"to look at; measure more samples with meanflow eval), got {self.sample_count}")
        _check(self.sample_steps is None or 0 < self.sample_steps <= MAX_STEPS,
               f"logging.sample_steps must be in [1, {MAX_STEPS}] (or null: the method's own), got "
               f"{self.sample_steps}")
