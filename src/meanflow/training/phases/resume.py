"""The resume phase: continue a run from its checkpoint, bit for bit.

In two parts, because the weights must be loaded whole before FSDP cuts them into shards:
`load_weights` (called by the build phase, right after the network is on its device) and
`resume_run` (once the optimizer, EMAs and target exist). Together they restore every tensor the
checkpoint holds (``model/``, ``ema/<key>/``, ``target/``, ``optim/``), the data order and the
step; everything else of a step is a function of (seed, rank, step), so the resumed run continues
exactly where the interrupted one stopped.

Touches: `run.net` weights (through `load_weights`), `run.ema`, `run.target`, `run.optimizer`,
`run.loader` (its state), `run.start`, `run.step`, `run.last_ckpt`. Reads `run.cfg`, `run.total`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from meanflow.errors import UserError
from meanflow.training import fsdp
from meanflow.training.checkpoint import Checkpoint, ema_prefix
from meanflow.training.config import Config
from meanflow.training.config_io import config_diff, config_from_dict, config_to_dict

if TYPE_CHECKING:
    from meanflow.training.run_state import RunState

RESUMABLE_CHANGES = ("training.steps", "training.epochs", "training.checkpoint_every",
                     "training.keep_last", "training.device", "training.num_threads",
                     "training.replica_check_every", "training.on_nonfinite",
                     "training.max_nonfinite_skips", "training.parallel", "logging", "data.data_dir",
                     "data.download", "preset")
"""Keys that may change between a checkpoint and the run resuming it (length, outputs, device)."""


def open_checkpoint(resume: str | Path | None, cfg: Config) -> Checkpoint | None:
    """The checkpoint (or newest checkpoint of the run folder) `resume` names, checked against `cfg`;
    None for a fresh run."""
    if resume is None:
        return None
    ckpt = Checkpoint(resume)
    check_resumable(ckpt, cfg)
    return ckpt


def check_resumable(ckpt: Checkpoint, cfg: Config) -> None:
    """UserError when `ckpt` was written by a run whose config differs from `cfg` in a key that
    changes the model or the optimisation."""
    try:
        old = config_from_dict(ckpt.config)
    except UserError as e:
        raise UserError(f"checkpoint {ckpt.path} holds an unreadable config: {e}") from None
    diff = config_diff(_resolved_precision(old), _resolved_precision(cfg), ignore=RESUMABLE_CHANGES)
    if diff:
        key = diff[0]
        a, b = _lookup(config_to_dict(old), key), _lookup(config_to_dict(cfg), key)
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise UserError(f"checkpoint {ckpt.path} is from another config: {key} is {a!r} there but {b!r} "
                        f"here{more}")


def _resolved_precision(cfg: Config) -> Config:
    """`cfg` with ``training.precision='auto'`` spelled out where its device fixes it (fp32 on 'cpu', bf16
    on 'cuda'): a run trained in fp32 on a GPU resumes on a CPU with 'auto', and an 'auto' GPU run
    (bf16) does not resume as fp32."""
    t = cfg.training
    if t.precision != "auto" or t.device not in ("cpu", "cuda"):
        return cfg
    return dataclasses.replace(cfg, training=dataclasses.replace(
        t, precision="fp32" if t.device == "cpu" else "bf16"))


def _lookup(d: dict, key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def load_weights(ckpt: Checkpoint, net: nn.Module, vae) -> None:
    """The checkpoint's full weights into `net` (before FSDP shards it); UserError when the run is
    resumed on latents of another VAE (`vae`: the cache's VAE record, or None)."""
    ckpt.load_into(net)
    old = ckpt.state.get("vae")
    if old is not None and vae is not None and old.get("fingerprint") != vae.fingerprint:
        raise UserError(f"checkpoint {ckpt.path} was trained on latents of VAE {old.get('name')!r} "
                        f"(fingerprint {old.get('fingerprint')}), this cache is from VAE {vae.name!r} "
                        f"({vae.fingerprint})")


def resume_run(run: RunState, ckpt: Checkpoint) -> None:
    """Restore the target network, the EMAs, the optimizer state, the data order and the step of
    `ckpt` into `run` (its weights are already loaded by `load_weights`)."""
    tc = run.cfg.training
    if run.target is not None:
        ckpt.load_into(run.target.net, "target/")
    ema = run.ema
    for key in tc.ema_keys:
        ema.load(key, fsdp.shard_like(ckpt.tensors_like(ema_prefix(key), ema.state(key)), ema.state(key)))
    opt_state = ckpt.optimizer()
    if opt_state is not None:
        fused = [g.get("fused") for g in run.optimizer.param_groups]
        fsdp.load_optimizer_state(run.optimizer, opt_state)
        for g, f in zip(run.optimizer.param_groups, fused):  # this build's kernel, not the writer's
            g["fused"] = f
    run.loader.load_state_dict(ckpt.state["sampler"])
    run.start = run.step = ckpt.step
    ema.num_updates = run.start
    run.last_ckpt = str(ckpt.path)
    if run.start > run.total:
        raise UserError(f"checkpoint is at step {run.start}, past the end of the run (step {run.total}): "
                        "raise training.steps to train longer")
