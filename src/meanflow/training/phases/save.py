"""The checkpoint phase: write the run's whole state at step `run.step` (`training.checkpoint`).

Never writes a state past a non-finite step (the guard is read back first). Under FSDP every rank
takes part in gathering the full tensors; rank 0 alone writes. The file holds ``model/``,
``ema/<decay>/``, ``optim/`` and ``target/`` tensors and, as JSON, the config and the run state
(step, data-sampler position, seed, world size, sample shape, classes, ...); only the newest
``training.keep_last`` files are kept.

Touches: `run.last_ckpt` (the file written), the run folder's `checkpoints/`. Reads the trained
objects (`net`, `optimizer`, `ema`, `target`, `loader`) and `run.guard`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meanflow.errors import UserError
from meanflow.training import fsdp
from meanflow.training.checkpoint import checkpoint_path, prune_checkpoints, save_checkpoint
from meanflow.training.config_io import config_to_dict

if TYPE_CHECKING:
    from meanflow.training.run_state import RunState


def write_checkpoint(run: RunState) -> None:
    """Checkpoint step `run.step` into `run.run_dir/checkpoints/` (a collective under FSDP)."""
    run.guard.check(run.last_ckpt)  # never write a state past a non-finite step
    # Full tensors (gathered from every rank under FSDP: all ranks take part).
    keep = run.info.is_main  # the other ranks take part in the gathers, keep nothing
    model_sd, opt_sd = fsdp.model_state(run.net, keep), fsdp.optimizer_state(run.optimizer, keep)
    ema_sd = {d: fsdp.full_state(sd, keep) for d, sd in run.ema.shadows.items()}
    if not run.info.is_main:
        return
    path = checkpoint_path(run.run_dir, run.step)
    try:
        save_checkpoint(path, model=model_sd, ema=ema_sd, optimizer=opt_sd,
                        config=config_to_dict(run.cfg), state=run_record(run),
                        target=None if run.target is None else run.target.state_dict())
    except OSError as e:
        kept = f"; the previous checkpoint {run.last_ckpt} is intact" if run.last_ckpt else ""
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}{kept}") from None
    run.last_ckpt = str(path)
    prune_checkpoints(run.run_dir, run.cfg.training.keep_last)


def run_record(run: RunState) -> dict:
    """The checkpoint's ``state`` document: where the run is and what it trains."""
    state = {"step": run.step, "sampler": run.loader.state_dict(), "seed": run.cfg.training.seed,
             "world_size": run.info.world_size, "data_shape": list(run.parts.shape),
             "num_classes": run.parts.classes, "is_latent": run.is_latent, "total_steps": run.total,
             "parallel": "fsdp" if run.sharded else "ddp"}
    if run.vae is not None:
        state["vae"] = run.vae.to_dict()
    return state
