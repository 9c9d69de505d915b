"""The build phase: everything a run needs, built and validated before anything is written to disk.

    parts (dataset, network, method) -> data loader, steps -> network on its device, with its initial
    weights (seed, `training.init_from`, or the resumed checkpoint's) -> sample copy, FSDP shards ->
    optimizer, EMAs, target network, teacher -> augmentation, precision, non-finite guard, DDP wrapper

Every input error is a UserError raised here (or in the resume phase), so a bad config leaves no run
folder. Writes every field of the `RunState` it returns except the position (resume phase) and the
outputs (run-folder phase).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from meanflow.errors import UserError
from meanflow.methods.base import CONTEXT_KEYS, Method
from meanflow.training import distributed, fsdp
from meanflow.training.build import Parts, build_augment, build_parts, check_pairs
from meanflow.training.checkpoint import Checkpoint
from meanflow.training.config import Config
from meanflow.training.ema import EMA
from meanflow.training.nonfinite import NonFiniteGuard
from meanflow.training.phases.log import StepMeter
from meanflow.training.phases.resume import load_weights
from meanflow.training.phases.update import build_optimizer
from meanflow.training.run_state import RunState
from meanflow.training.target import TargetNetwork


def micro_batch_size(tc, world: int) -> int:
    """Rows of one micro-batch, ``batch_size / (world * grad_accum)``; UserError when the batch does
    not split evenly over the processes and the accumulation rounds."""
    if tc.batch_size % world:
        raise UserError(f"training.batch_size ({tc.batch_size}) is not divisible by the number of "
                        f"processes ({world})")
    per_rank = tc.batch_size // world
    if per_rank % tc.grad_accum:
        raise UserError(f"per-process batch {per_rank} is not divisible by training.grad_accum "
                        f"({tc.grad_accum})")
    return per_rank // tc.grad_accum


def build_run(cfg: Config, info: distributed.DistInfo, device: torch.device, micro: int,
              ckpt: Checkpoint | None, parts: Parts | None, echo: Callable[[str], None],
              check_each_step: bool | None = None) -> RunState:
    """The `RunState` of `cfg` (from prebuilt `parts` when given), its network holding the weights
    of `ckpt` when resuming. `check_each_step` None: read the non-finite flags back after every step
    on the CPU only."""
    tc = cfg.training
    parts = parts or build_parts(cfg)
    check_pairs(cfg, parts.data, parts.method)
    from meanflow.data import BatchLoader

    loader = BatchLoader(parts.data, tc.batch_size // info.world_size, seed=tc.seed, rank=info.rank,
                         world_size=info.world_size)
    n_data = len(parts.data)
    total, warmup = tc.total_steps(n_data), tc.warmup(n_data)
    net = parts.net.to(device)
    if tc.init_from and ckpt is None:
        init_weights(cfg, net)
    needs = method_needs(parts.method)
    sharded = tc.parallel == "fsdp" and info.enabled
    if sharded and needs & {"target", "teacher"}:
        raise UserError(f"training.parallel=fsdp does not support method {cfg.method.name!r} (it needs a "
                        "target or teacher network): use training.parallel=ddp")
    vae = getattr(parts.data, "vae", None)
    if ckpt is not None:
        load_weights(ckpt, net, vae)  # full weights, before FSDP cuts them into shards
    sample_net = copy.deepcopy(net).eval().requires_grad_(False)
    if sharded:  # the full copy for sample grids waits in host memory (FSDP: device memory is for shards)
        sample_net.cpu()
        fsdp.shard_model(net, device)
    optimizer = build_optimizer(net, tc)
    ema = EMA(net, tc.ema_decays, warmup=tc.ema_warmup, halflives_kimg=tc.ema_halflife_kimg,
              batch_size=tc.batch_size, rampup=tc.ema_rampup)
    target = TargetNetwork(net) if "target" in needs else None
    teacher = load_teacher(cfg, parts, device) if "teacher" in needs else None
    augment = build_augment(cfg)
    if augment is not None and len(parts.shape) != 3:
        raise UserError("data.augment_p > 0 applies to images only")
    return RunState(
        cfg=cfg, info=info, device=device, echo=echo, parts=parts, micro=micro, total=total, warmup=warmup,
        needs=needs, sharded=sharded, vae=vae, augment=augment,
        use_bf16=tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda"),
        # The CPU reads the guard's flags back every step (free); a GPU only where the loop syncs anyway.
        check_each_step=device.type != "cuda" if check_each_step is None else check_each_step,
        loader=loader, net=net,
        # The method gets the DDP wrapper, or under FSDP the sharded module itself (SPEC §4.1).
        ddp_net=net if sharded else distributed.wrap(net, info, device),
        sample_net=sample_net, optimizer=optimizer, ema=ema, target=target, teacher=teacher,
        guard=NonFiniteGuard(tc.on_nonfinite, tc.max_nonfinite_skips, device, distributed=info.enabled),
        meter=StepMeter(device))


def method_needs(method) -> frozenset[str]:
    """The training context `method` declares (see `meanflow.methods.base.CONTEXT_KEYS`)."""
    needs = frozenset(getattr(method, "needs", ()))
    unknown = sorted(needs - set(CONTEXT_KEYS))
    if unknown:
        raise UserError(f"method {type(method).__name__} needs unknown training context {unknown} "
                        f"(known: {', '.join(CONTEXT_KEYS)})")
    if "target" in needs and getattr(type(method), "target_decay", None) is Method.target_decay:
        raise UserError(f"method {type(method).__name__} needs a target network but defines no "
                        "target_decay(progress)")
    return needs


def load_teacher(cfg: Config, parts: Parts, device: torch.device) -> nn.Module:
    """The frozen teacher network of `training.teacher` (built from the teacher run's own config); it
    must generate the student's sample shape with the same classes."""
    if not cfg.training.teacher:
        raise UserError(f"method {cfg.method.name} needs a teacher: set training.teacher=RUN_OR_CHECKPOINT")
    from meanflow.training.load import load_generator
    from meanflow.training.teacher import check_teacher_method

    tc = cfg.training
    _, teacher, teacher_cfg = load_generator(tc.teacher, ema=tc.teacher_ema, device=device)
    check_teacher_method(teacher_cfg.method.name, cfg.training.teacher)  # also hf:// and library callers
    shape, classes = tuple(teacher.meanflow_shape), int(teacher.meanflow_num_classes)
    if shape != tuple(parts.shape) or classes != parts.classes:
        raise UserError(f"teacher {cfg.training.teacher} generates shape {list(shape)} with {classes} "
                        f"classes, this run trains shape {list(parts.shape)} with {parts.classes} classes")
    return teacher


def init_weights(cfg: Config, net: nn.Module) -> None:
    """Load the weights `training.init_from` / `training.init_ema` names into `net` (same network:
    names and shapes are checked, the first difference is the error)."""
    from meanflow.training.load import weights_prefix

    try:
        src = Checkpoint(cfg.training.init_from)
        src.load_into(net, weights_prefix(src, cfg.training.init_ema), getattr(net, "fresh_parameters", ()))
    except UserError as e:
        raise UserError(f"training.init_from: {e}") from None
