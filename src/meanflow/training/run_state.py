"""`RunState`: everything one training run holds while it runs, shared by the loop's phases.

The build phase (`phases.build.build_run`) makes it whole; the other phases
(`meanflow.training.phases`, see `docs/design.md`) receive it and touch only their own fields.
Field groups below name the phase that writes them; every other phase only reads them. The objects'
own state (weights, optimizer moments, EMA shadows, target weights, data order) changes only in the
step phase, and once before the first step in the resume phase.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from meanflow.data import BatchLoader
    from meanflow.training.build import Parts
    from meanflow.training.config import Config
    from meanflow.training.distributed import DistInfo
    from meanflow.training.ema import EMA
    from meanflow.training.nonfinite import NonFiniteGuard
    from meanflow.training.phases.log import StepMeter
    from meanflow.training.run_log import Logger
    from meanflow.training.target import TargetNetwork


@dataclass
class RunState:
    """One training run: its parts, the trained objects, its position and its outputs."""

    # ---- fixed by the build phase (read by every phase) -------------------------------------
    cfg: Config
    """The resolved config (the checkpoint phase saves it)."""
    info: DistInfo
    """This process's rank and the world size."""
    device: torch.device
    echo: Callable[[str], None]
    """Where rank 0's one-line messages go."""
    parts: Parts
    """Dataset, network (also `net`), method, sample shape, classes."""
    micro: int
    """Rows of one micro-batch: ``batch_size / (world_size * grad_accum)``."""
    total: int
    """The step the run ends at."""
    warmup: int
    """Learning-rate warm-up steps."""
    needs: frozenset[str]
    """The training context the method declares (a subset of ``progress``, ``target``, ``teacher``)."""
    sharded: bool
    """FSDP: `net` is cut into shards across the ranks."""
    vae: Any
    """The latent cache's VAE record (saved in checkpoints), or None."""
    augment: Callable | None
    """The augmentation pipe ``(x [B, C, H, W], generator) -> (x, labels [B, L])``, or None."""
    use_bf16: bool
    """Forward passes under bfloat16 autocast."""
    check_each_step: bool
    """Read the non-finite flags back after every step (CPU), else only at the loop's sync points."""

    # ---- built by the build phase; their state changes in the step (and resume) phase ----------
    loader: BatchLoader
    """The data order (resume restores its position; the step phase draws from it)."""
    net: nn.Module
    """The trained network, unwrapped (FSDP: sharded in place)."""
    ddp_net: nn.Module
    """What the method calls: the DDP wrapper, or `net` itself (one process, FSDP)."""
    sample_net: nn.Module
    """An eval-mode copy the sample-grid and evaluation phases load the first EMA into."""
    optimizer: torch.optim.Optimizer
    ema: EMA
    """The EMAs of the weights, one per `training.ema_keys` (decays and half-lives)."""
    target: TargetNetwork | None
    """The method's target network (``"target" in needs``), else None."""
    teacher: nn.Module | None
    """The frozen teacher (``"teacher" in needs``), else None."""
    guard: NonFiniteGuard
    """The non-finite guard: its 0-dim ``skip`` flag gates the update, EMAs and target."""
    meter: StepMeter
    """Metric sums since the last log record (the step phase adds, the log phase reads and resets)."""

    # ---- position: resume sets it, the step phase advances it ------------------------------
    start: int = 0
    """The step the run (re)started from."""
    step: int = 0
    """Optimizer steps taken (the step phase counts; the next checkpoint is named after it)."""

    # ---- outputs: the run-folder phase opens them (rank 0), the checkpoint phase moves last_ckpt
    run_dir: Path | None = None
    """The run folder (rank 0; None on the other ranks)."""
    logger: Logger | None = None
    """`log.jsonl` / TensorBoard (a no-op off rank 0)."""
    last_ckpt: str = ""
    """The newest checkpoint written or resumed from, for error messages ("" when none yet)."""

    @property
    def is_image(self) -> bool:
        """Samples are ``[C, H, W]`` (images or latents), not points."""
        return len(self.parts.shape) == 3

    @property
    def is_latent(self) -> bool:
        """The data are latents of a VAE (no image grid is drawn of them)."""
        return bool(getattr(self.parts.data, "is_latent", False))
