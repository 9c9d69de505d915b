"""The training loop. It knows no method: it calls `method.loss(net, x, y)` and `method.sample`.
On pairs data (a dataset with a `noise` tensor) it passes each sample's stored noise as `noise=`.

    run_dir = train(resolve_config("digits"))

Runs alone (rank 0 of 1) or under torchrun (see `distributed`). Every random draw of step s on rank
k comes from a generator reseeded with (seed, k, s), and the data order is a pure function of
(seed, epoch), so stopping at step N and resuming gives bit-identical weights on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meanflow.errors import UserError
from meanflow.methods.base import CONTEXT_KEYS, Method, Progress
from meanflow.training import distributed, fsdp
from meanflow.training.build import (
    build_augment,
    build_data,
    build_method_from,
    build_net,
    check_pairs,
    data_shape,
    num_classes,
)
from meanflow.training.checkpoint import (
    Checkpoint,
    checkpoint_path,
    prune_checkpoints,
    remove_stale_temps,
    run_dir_of,
    save_checkpoint,
)
from meanflow.training.config import Config
from meanflow.training.config_io import config_diff, config_from_dict, config_to_dict, config_to_yaml
from meanflow.training.ema import EMA
from meanflow.training.nonfinite import NonFiniteGuard
from meanflow.training.rundir import next_run_dir
from meanflow.training.schedule import lr_at, step_seed
from meanflow.training.target import TargetNetwork
from meanflow.utils.files import atomic_files

# Keys that may change between a checkpoint and the run resuming it (length, outputs, device).
RESUMABLE_CHANGES = ("training.steps", "training.epochs", "training.checkpoint_every",
                     "training.keep_last", "training.device", "training.num_threads",
                     "training.replica_check_every", "training.on_nonfinite",
                     "training.max_nonfinite_skips", "training.parallel", "logging", "data.data_dir",
                     "data.download", "preset")
# Read the non-finite guard's flags back after every step (None: on the CPU, where it is free; not on
# a GPU, where the loop checks at its own sync points). Tests set False to run the GPU schedule on a CPU.
CHECK_EACH_STEP: bool | None = None
# Offset of the training seed for the augmentation generator's stream (independent of the global
# stream that noise, times and dropout draw from).
AUGMENT_STREAM = 0xA06


@dataclass
class Parts:
    """What a run is made of, built (and validated) before anything is written to disk."""

    data: Any
    """ImageData or PointData (meanflow.data)."""
    net: nn.Module
    """The network, unwrapped, on the CPU."""
    method: Any
    """The method object (meanflow.methods)."""
    shape: tuple[int, ...]
    """Shape of one sample."""
    classes: int
    """Classes conditioned on (0: unconditional)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device=cuda but no CUDA device is available")
    return torch.device(name)


def build_parts(cfg: Config) -> Parts:
    """Dataset, network (initialised from `training.seed`) and method of `cfg`."""
    data = build_data(cfg)
    shape = data_shape(data)
    classes = num_classes(cfg, data)
    method = build_method_from(cfg, classes)
    torch.manual_seed(cfg.training.seed)
    net = build_net(cfg, shape, classes, method)
    return Parts(data, net, method, shape, classes)


def check_resumable(ckpt: Checkpoint, cfg: Config) -> None:
    """UserError when `ckpt` was written by a run whose config differs from `cfg` in a key that
    changes the model or the optimisation."""
    try:
        old = config_from_dict(ckpt.config)
    except UserError as e:
        raise UserError(f"checkpoint {ckpt.path} holds an unreadable config: {e}") from None
    diff = config_diff(old, cfg, ignore=RESUMABLE_CHANGES)
    if diff:
        key = diff[0]
        a, b = _lookup(config_to_dict(old), key), _lookup(config_to_dict(cfg), key)
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise UserError(f"checkpoint {ckpt.path} is from another config: {key} is {a!r} there but {b!r} "
                        f"here{more}")


def _lookup(d: dict, key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


class _StopFlag:
    """First Ctrl-C (SIGINT) asks the loop to stop after the current step and write a checkpoint;
    a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class _Logger:
    """Scalars to JSONL (and TensorBoard when installed), rank 0 only.

    Resuming from step `start` first drops the records past `start` that the interrupted run wrote
    after its last checkpoint (with `final`, a run that only redoes its final phase, also the end-of-run
    evaluation records at `start`) (JSONL rewritten atomically; TensorBoard through `purge_step`), so the
    log holds every step once.
    """

    def __init__(self, run_dir: Path | None, tensorboard: bool, start: int = 0, final: bool = False) -> None:
        self.path = None if run_dir is None else run_dir / "log.jsonl"
        self.tb = None
        if self.path is not None and start > 0:
            _truncate_log(self.path, start, drop_evals=final)
        if run_dir is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1 if start else None)
            except Exception:  # tensorboard not installed: JSONL only
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
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

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _method_needs(method) -> frozenset[str]:
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


def _context(needs: frozenset[str], progress: Progress, target, teacher) -> dict[str, Any]:
    """The keywords of `method.loss` beyond the batch: exactly what the method declared."""
    have = {"progress": progress, "target": None if target is None else target.net, "teacher": teacher}
    return {k: have[k] for k in needs}


def _load_teacher(cfg: Config, parts: Parts, device: torch.device) -> nn.Module:
    """The frozen teacher network of `training.teacher` (built from the teacher run's own config); it
    must generate the student's sample shape with the same classes."""
    if not cfg.training.teacher:
        raise UserError(f"method {cfg.method.name} needs a teacher: set training.teacher=RUN_OR_CHECKPOINT")
    from meanflow.training.load import load_generator

    _, teacher, _ = load_generator(cfg.training.teacher, ema=cfg.training.teacher_ema, device=device)
    shape, classes = tuple(teacher.meanflow_shape), int(teacher.meanflow_num_classes)
    if shape != tuple(parts.shape) or classes != parts.classes:
        raise UserError(f"teacher {cfg.training.teacher} generates shape {list(shape)} with {classes} "
                        f"classes, this run trains shape {list(parts.shape)} with {parts.classes} classes")
    return teacher


def _init_weights(cfg: Config, net: nn.Module) -> None:
    """Load the weights `training.init_from` / `training.init_ema` names into `net` (same network:
    names and shapes are checked, the first difference is the error)."""
    from meanflow.training.load import weights_prefix

    try:
        src = Checkpoint(cfg.training.init_from)
        src.load_into(net, weights_prefix(src, cfg.training.init_ema), getattr(net, "fresh_parameters", ()))
    except UserError as e:
        raise UserError(f"training.init_from: {e}") from None


def _truncate_log(path: Path, start: int, drop_evals: bool = False) -> None:
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
        _write_atomic(path, "".join(x + "\n" for x in keep))


def _write_atomic(path: Path, text: str) -> None:
    with atomic_files(user_errors=False) as files:
        files.tmp(path).write_text(text)


def build_optimizer(net: nn.Module, tc) -> torch.optim.Optimizer:
    """Adam or AdamW, fused where the device has the kernel (CPU, CUDA): the fused kernels read the
    non-finite guard's flag (`found_inf`) on the device and skip a bad step without a host sync; RAdam
    (no fused kernel: the guard skips on the host)."""
    kw = dict(lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay, eps=tc.eps)
    if tc.optimizer == "radam":
        return torch.optim.RAdam(net.parameters(), **kw)
    opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    try:
        return opt_cls(net.parameters(), fused=True, **kw)
    except RuntimeError:  # no fused kernel for this device / dtype
        return opt_cls(net.parameters(), **kw)


def optimizer_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """`optimizer.step()` unless `skip` (0-dim, 1.0 = skip): inside the fused kernel, else on the host."""
    if all(g.get("fused") for g in optimizer.param_groups):
        optimizer.grad_scale, optimizer.found_inf = None, skip
        optimizer.step()
    elif not skip.item():
        optimizer.step()


def apply_update(net: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None,
                 guard: NonFiniteGuard, loss: torch.Tensor, step: int, ema: EMA, target: TargetNetwork | None,
                 method, progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    """The one optimizer step of the loop, once the gradients of the step are accumulated.

    Clip (or measure) the global gradient norm, let the non-finite guard judge step `step + 1` from
    its loss and norm, step the optimizer unless the guard says skip, clear the gradients, then move
    the EMAs and the method's target network (decay `method.target_decay(progress)`), both masked by
    the same skip flag. Returns ``(skip, grad_norm)``, 0-dim tensors on the device (no host sync).
    """
    if grad_clip is not None:
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    else:
        gnorm = torch.nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
    gnorm = fsdp.full(gnorm)  # FSDP: the norm of the whole gradient, the same on every rank
    skip = guard.observe(step + 1, loss, gnorm)
    optimizer_step(optimizer, skip)
    optimizer.zero_grad(set_to_none=True)
    ema.update(net, skip)
    if target is not None:
        target.update(net, method.target_decay(progress), skip)
    return skip, gnorm


def _make_run_dir(ckpt: Checkpoint | None, out_dir: str, desc: str) -> Path:
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


def train(cfg: Config, *, resume: str | Path | None = None, stop_at: int | None = None,
          parts: Parts | None = None, echo: Callable[[str], None] = print) -> Path | None:
    """Train `cfg`; return the run folder on rank 0 (None on other ranks).

    Args:
        cfg: the resolved, validated config.
        resume: a run folder or checkpoint to continue from (its config must match `cfg` up to
            `RESUMABLE_CHANGES`).
        stop_at: stop after this step as if interrupted (writes a checkpoint); for tests.
        parts: prebuilt dataset / network / method (default: `build_parts(cfg)`).
        echo: where rank 0's one-line messages go.
    """
    device = resolve_device(cfg.training.device)
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    owns_group = not torch.distributed.is_initialized()
    info = distributed.init(device.type)
    try:
        return _train(cfg, info, device, resume, stop_at, parts, echo)
    finally:
        if owns_group:
            distributed.shutdown()


def _train(cfg: Config, info: distributed.DistInfo, device: torch.device, resume, stop_at, parts,
           echo) -> Path | None:
    tc, lc = cfg.training, cfg.logging
    world = info.world_size
    if tc.batch_size % world:
        raise UserError(f"training.batch_size ({tc.batch_size}) is not divisible by the number of "
                        f"processes ({world})")
    per_rank = tc.batch_size // world
    if per_rank % tc.grad_accum:
        raise UserError(f"per-process batch {per_rank} is not divisible by training.grad_accum "
                        f"({tc.grad_accum})")
    micro = per_rank // tc.grad_accum
    ckpt = None
    if resume is not None:
        ckpt = Checkpoint(resume)
        check_resumable(ckpt, cfg)

    # ---- build and validate everything before the run folder exists -------------------------
    parts = parts or build_parts(cfg)
    check_pairs(cfg, parts.data, parts.method)
    from meanflow.data import BatchLoader

    loader = BatchLoader(parts.data, per_rank, seed=tc.seed, rank=info.rank, world_size=world)
    n_data = len(parts.data)
    total = tc.total_steps(n_data)
    warmup = tc.warmup(n_data)
    net = parts.net.to(device)
    if tc.init_from and ckpt is None:
        _init_weights(cfg, net)
    needs = _method_needs(parts.method)
    sharded = tc.parallel == "fsdp" and info.enabled
    if sharded and needs & {"target", "teacher"}:
        raise UserError(f"training.parallel=fsdp does not support method {cfg.method.name!r} (it needs a "
                        "target or teacher network): use training.parallel=ddp")
    vae = getattr(parts.data, "vae", None)
    if ckpt is not None:
        ckpt.load_into(net)  # full weights, before FSDP cuts them into shards
        _check_vae(ckpt, vae)
    sample_net = copy.deepcopy(net).eval().requires_grad_(False)
    if sharded:  # the full copy for sample grids waits in host memory (FSDP: device memory is for shards)
        sample_net.cpu()
        fsdp.shard_model(net, device)
    optimizer = build_optimizer(net, tc)
    ema = EMA(net, tc.ema_decays, warmup=tc.ema_warmup)
    target = TargetNetwork(net) if "target" in needs else None
    teacher = _load_teacher(cfg, parts, device) if "teacher" in needs else None
    start = 0
    if ckpt is not None:
        if target is not None:
            ckpt.load_into(target.net, "target/")
        for d in tc.ema_decays:
            ema.load(d, fsdp.shard_like(ckpt.tensors_like(f"ema/{float(d)!r}/", ema.state(d)), ema.state(d)))
        opt_state = ckpt.optimizer()
        if opt_state is not None:
            fused = [g.get("fused") for g in optimizer.param_groups]
            fsdp.load_optimizer_state(optimizer, opt_state)
            for g, f in zip(optimizer.param_groups, fused):  # this build's kernel, not the writer's
                g["fused"] = f
        loader.load_state_dict(ckpt.state["sampler"])
        start = ckpt.step
        ema.num_updates = start
        if start > total:
            raise UserError(f"checkpoint is at step {start}, past the end of the run (step {total}): "
                            "raise training.steps to train longer")
    is_image = len(parts.shape) == 3
    augment = build_augment(cfg)
    if augment is not None and not is_image:
        raise UserError("data.augment_p > 0 applies to images only")
    is_latent = bool(getattr(parts.data, "is_latent", False))

    run_dir: Path | None = None
    if info.is_main:
        run_dir = _make_run_dir(ckpt, lc.out_dir, cfg.describe())
        try:
            _write_atomic(run_dir / "config.yaml", config_to_yaml(cfg))
            _write_atomic(run_dir / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")
        except OSError as e:
            raise UserError(f"cannot write the config into run folder {run_dir}: {e.strerror or e}") from None
        echo(f"run folder: {run_dir}")
        echo(f"{n_data} training samples of shape {list(parts.shape)}, {parts.classes} classes; "
             f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters; "
             f"{world} process(es) on {device.type}; steps {start} -> {total}")
    logger = _Logger(run_dir, lc.tensorboard, start, final=start == total)
    if info.is_main and start == total:
        echo(f"checkpoint is at the last step ({total}): writing the final outputs only (raise "
             "training.steps to train longer)")

    # The method gets the DDP wrapper, or under FSDP the sharded module itself (SPEC §4.1).
    ddp_net = net if sharded else distributed.wrap(net, info, device)
    use_bf16 = tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda")

    guard = NonFiniteGuard(tc.on_nonfinite, tc.max_nonfinite_skips, device, distributed=info.enabled)
    # The CPU reads the guard's flags back every step (free); a GPU only where the loop syncs anyway.
    check_each_step = device.type != "cuda" if CHECK_EACH_STEP is None else CHECK_EACH_STEP
    last_ckpt = [str(ckpt.path) if ckpt is not None else ""]

    def checkpoint(step: int) -> None:
        guard.check(last_ckpt[0])  # never write a state past a non-finite step
        # Full tensors (gathered from every rank under FSDP: all ranks take part).
        keep = info.is_main  # the other ranks take part in the gathers, keep nothing
        model_sd, opt_sd = fsdp.model_state(net, keep), fsdp.optimizer_state(optimizer, keep)
        ema_sd = {d: fsdp.full_state(sd, keep) for d, sd in ema.shadows.items()}
        if not info.is_main:
            return
        state = {"step": step, "sampler": loader.state_dict(), "seed": tc.seed, "world_size": world,
                 "data_shape": list(parts.shape), "num_classes": parts.classes, "is_latent": is_latent,
                 "total_steps": total, "parallel": "fsdp" if sharded else "ddp"}
        if vae is not None:
            state["vae"] = vae.to_dict()
        path = checkpoint_path(run_dir, step)
        try:
            save_checkpoint(path, model=model_sd, ema=ema_sd, optimizer=opt_sd,
                            config=config_to_dict(cfg), state=state,
                            target=None if target is None else target.state_dict())
        except OSError as e:
            kept = f"; the previous checkpoint {last_ckpt[0]} is intact" if last_ckpt[0] else ""
            raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}{kept}") from None
        last_ckpt[0] = str(path)
        prune_checkpoints(run_dir, tc.keep_last)

    def samples(step: int, final: bool = False) -> None:
        """A grid of `logging.sample_count` samples from the first EMA (sharded over ranks)."""
        guard.check(last_ckpt[0])
        if tc.ema_decays:
            ema.copy_to(sample_net, tc.ema_decays[0])
        else:
            sample_net.load_state_dict(fsdp.model_state(net))
        n = lc.sample_count
        per = math.ceil(n / world)
        from meanflow.sampling import generate

        sample_net.to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            x = generate(parts.method, sample_net, info.rank * per, (info.rank + 1) * per,
                         steps=lc.sample_steps or parts.method.default_steps, seed=tc.seed,
                         batch_size=max(per, 1), device=device, shape=parts.shape, num_classes=parts.classes)
        if sharded:
            sample_net.cpu()
        x = distributed.all_gather_cat(x.to(device)).cpu()[:n]
        if not info.is_main:
            return
        from meanflow.utils.images import save_grid, save_points

        folder = run_dir / "samples"
        if is_image and not is_latent:
            ncol = parts.classes if parts.classes and n % parts.classes == 0 and parts.classes >= 8 else None
            save_grid(x, folder / f"step-{step:07d}.png", ncol=ncol)
            if final:
                save_grid(x, run_dir / "samples.png", ncol=ncol)
        elif len(parts.shape) == 1 and parts.shape[0] == 2:
            ref = parts.data.x[: min(len(parts.data), 20000)]
            save_points(x, folder / f"step-{step:07d}.png", reference=ref)
            if final:
                save_points(x, run_dir / "samples.png", reference=ref)

    # ---- the loop --------------------------------------------------------------------------------
    bar = None
    if info.is_main and lc.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, dynamic_ncols=True, desc="train", leave=True)
    sums: dict[str, torch.Tensor] = {}
    good = torch.zeros((), device=device)  # finite steps summed into `sums` since the last log
    count = 0
    t_last = time.perf_counter()
    step = start
    stopped = False
    net.train()
    # The bar is closed (its line ended) before any error message is printed.
    closing = contextlib.closing(bar) if bar is not None else contextlib.nullcontext()
    with _StopFlag() as flag, closing:
        while step < total:
            torch.manual_seed(step_seed(tc.seed, info.rank, step))
            lr = lr_at(step, tc.lr, warmup, tc.lr_decay_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch = loader.next_batch()
            x_all = batch.x.to(device)
            y_all = batch.y.to(device) if (batch.y is not None and parts.classes) else None
            # Pairs data: the noise stored with each sample replaces the method's fresh draw.
            noise_all = None if batch.noise is None else batch.noise.to(device)
            aug_all = None
            if augment is not None:
                # Own generator, reseeded per step (like every other draw): exact on resume.
                gen = torch.Generator().manual_seed(step_seed(tc.seed + AUGMENT_STREAM, info.rank, step))
                x_all, aug_all = augment(x_all, gen)
            step_metrics: dict[str, torch.Tensor] = {}
            loss_sum = torch.zeros((), device=device)
            progress = Progress(step, total)
            context = _context(needs, progress, target, teacher)
            for i in range(tc.grad_accum):
                x = x_all[i * micro:(i + 1) * micro]
                y = None if y_all is None else y_all[i * micro:(i + 1) * micro]
                # Only an augmenting run passes net_kwargs (a method may not take them otherwise).
                extra = {} if aug_all is None else {
                    "net_kwargs": {"augment_labels": aug_all[i * micro:(i + 1) * micro]}}
                if noise_all is not None:
                    extra["noise"] = noise_all[i * micro:(i + 1) * micro]
                last = i == tc.grad_accum - 1
                sync = contextlib.nullcontext() if (last or ddp_net is net) else ddp_net.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                        out = parts.method.loss(ddp_net, x, y, **extra, **context)
                    (out.loss / tc.grad_accum).backward()
                loss_sum = loss_sum + out.loss.detach().float()
                for k, v in out.metrics.items():
                    v = torch.as_tensor(v, dtype=torch.float32).detach().to(device)
                    step_metrics[k] = step_metrics.get(k, 0) + v / tc.grad_accum
            skip, gnorm = apply_update(net, optimizer, tc.grad_clip, guard, loss_sum, step, ema, target,
                                       parts.method, progress)
            if tc.grad_clip is not None:
                step_metrics["grad_norm"] = gnorm.detach().float()
            step += 1
            count += 1
            ok = 1.0 - skip
            for k, v in step_metrics.items():  # a skipped step's metrics stay out of the averages
                sums[k] = sums.get(k, 0) + torch.where(ok > 0, v, torch.zeros_like(v))
            good = good + ok
            if check_each_step:
                guard.check(last_ckpt[0])

            if step % lc.log_every == 0 or step == total:
                if not check_each_step:
                    guard.check(last_ckpt[0])
                names = sorted(sums)
                vals = distributed.all_reduce_mean(torch.stack([sums[k] for k in names] + [good]))
                n_good = float(vals[-1])
                now = time.perf_counter()
                means = {k: float(v) / n_good for k, v in zip(names, vals)} if n_good else {}
                rec = {"step": step, **means, "lr": lr, "sec_per_step": (now - t_last) / count}
                skipped = guard.take_skipped()
                if skipped:
                    rec["skipped_steps"] = skipped
                t_last, sums, count, good = now, {}, 0, torch.zeros((), device=device)
                logger.write(rec)
                if bar is not None and n_good:
                    shown = "mse" if "mse" in rec else "loss"
                    bar.set_postfix({shown: f"{rec.get(shown, float('nan')):.4g}"}, refresh=False)
            if bar is not None:
                bar.update(1)
            if info.enabled and not sharded and step % tc.replica_check_every == 0:
                distributed.check_replicas(net)
            if step % lc.sample_every == 0 and step < total:
                samples(step)
            stop = distributed.any_rank(flag.requested, device) or (stop_at is not None and step >= stop_at)
            if step % tc.checkpoint_every == 0 or step == total or stop:
                checkpoint(step)
            if stop and step < total:
                stopped = True
                break

    if stopped:
        if info.is_main:
            echo(f"stopped at step {step}; checkpoint written. "
                 f"Continue with: meanflow train --resume {run_dir}")
        logger.close()
        return run_dir
    samples(step, final=True)
    if len(parts.shape) == 1 and cfg.data.is_toy:
        _toy_report(cfg, parts, sample_net, info, run_dir, logger, step, echo)
    logger.close()
    if info.is_main:
        from meanflow.utils.plot import plot_loss

        plotted = plot_loss(run_dir / "log.jsonl", run_dir / "loss.png", echo=echo)
        curve = f"; loss curve: {run_dir / 'loss.png'}" if plotted else ""
        echo(f"done: {total} steps. Samples: {run_dir / 'samples.png'}{curve}")
    return run_dir


def _check_vae(ckpt: Checkpoint, vae) -> None:
    """UserError when resuming on latents of another VAE than the checkpoint was trained on."""
    old = ckpt.state.get("vae")
    if old is not None and vae is not None and old.get("fingerprint") != vae.fingerprint:
        raise UserError(f"checkpoint {ckpt.path} was trained on latents of VAE {old.get('name')!r} "
                        f"(fingerprint {old.get('fingerprint')}), this cache is from VAE {vae.name!r} "
                        f"({vae.fingerprint})")


def _toy_report(cfg: Config, parts: Parts, sample_net: nn.Module, info, run_dir, logger, step, echo) -> None:
    """Sliced Wasserstein and energy distance between samples (`logging.sample_steps`, default the
    method's `default_steps`) and fresh test points."""
    if not info.is_main:
        return
    from meanflow.data import build_dataset
    from meanflow.evaluation.toy_metrics import energy_distance, sliced_wasserstein
    from meanflow.sampling import generate

    n, steps = 4096, cfg.logging.sample_steps or parts.method.default_steps
    ref = build_dataset(cfg.data.name, split="test", n=n, seed=cfg.training.seed).x
    dev = next(sample_net.parameters()).device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        x = generate(parts.method, sample_net, 0, n, steps=steps, seed=cfg.training.seed + 1, batch_size=n,
                     device=dev, shape=parts.shape, num_classes=0)
    metrics = {"sliced_wasserstein": float(sliced_wasserstein(x, ref)), "energy_distance":
               float(energy_distance(x, ref))}
    record = {"step": step, "steps": steps, **metrics}
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.write({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
    echo(f"{steps}-step samples vs test points: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
