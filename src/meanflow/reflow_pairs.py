"""Write the coupled (noise, sample) pairs of a trained velocity model: the data of reflow and distill.

    manifest = write_pairs(net, "pairs/", PairsJob(num_pairs=100_000), source={...})

Pair i: ``e_i = noise_for(i, i + 1, shape, seed)`` (sample i of ``meanflow.sampling``, so the noise
depends only on (seed, i)), ``y_i = i % num_classes`` for a class-conditional model, and ``x_i`` the
solution at t = 0 of ``dz/dt = v(z, t)`` from ``z_1 = e_i`` (:func:`meanflow.methods.rectified_flow.
solve_to_data`; rk45 at tolerance 1e-5 by default, the reference's choice). Pairs are solved in
batches aligned to multiples of the batch size, so a given batch size gives bit-identical shards
whatever the shard size (when it is a multiple of the batch size) and across resumes; another batch
size changes rk45's shared step sizes and hence the samples within the tolerance (fixed-step solvers
only by float rounding).

The folder layout and the manifest are those of :mod:`meanflow.data.pairs`. Every shard and every
manifest update is written atomically; the manifest lists a shard (with its sha256) only once it is
complete, so a killed run is resumed by running the same command: listed shards whose hash checks
out are kept, anything else is (re)computed. A manifest made by another command (source run, step,
weights, seed, solver, shape, count, shard size) is refused. No training code is imported here.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meanflow.data.pairs import FORMAT, MANIFEST, read_manifest, sha256_file, shard_name, shard_ranges
from meanflow.errors import UserError
from meanflow.limits import check_seed, check_steps
from meanflow.methods.rectified_flow import solve_to_data
from meanflow.methods.solvers import ODE_METHODS
from meanflow.sampling import generation_kwargs, labels_for, model_info, noise_for
from meanflow.utils.files import atomic_files, save_safetensors

VELOCITY_METHODS = ("flow_matching", "reflow", "meanflow")
"""Methods whose network at ``h = 0`` is an instantaneous velocity ``v(z, t)`` (MeanFlow's
``u(z, t, t)``): the only runs whose ODE can make pairs."""
DEFAULT_STEPS = 100
"""Steps of the fixed-step solvers (euler, heun) unless told."""


@dataclass(frozen=True)
class PairsJob:
    """What to write (validated on construction).

    Attributes:
        num_pairs: N, the number of pairs.
        shard_size: Pairs per shard file (the last shard holds the rest).
        seed: Noise seed: pair i's noise is sample i of ``noise_for`` with this seed.
        solver: ``"rk45"`` (adaptive), ``"heun"`` or ``"euler"`` (fixed ``steps``).
        steps: Steps of heun / euler (unused by rk45).
        rtol: Relative tolerance of rk45.
        atol: Absolute tolerance of rk45.
        batch_size: Pairs solved together (rk45 takes one step size for the whole batch).
    """

    num_pairs: int
    shard_size: int = 10_000
    seed: int = 0
    solver: str = "rk45"
    steps: int = DEFAULT_STEPS
    rtol: float = 1e-5
    atol: float = 1e-5
    batch_size: int = 256

    def __post_init__(self) -> None:
        for name in ("num_pairs", "shard_size", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        check_seed(self.seed, "seed")
        check_steps(self.steps, "steps")
        if self.solver not in ODE_METHODS:
            raise UserError(f"unknown solver {self.solver!r}; choose from {', '.join(ODE_METHODS)}")
        if not (0 < self.rtol < math.inf and 0 < self.atol < math.inf):
            raise UserError(f"rtol and atol must be finite numbers > 0, got {self.rtol} and {self.atol}")

    def solver_record(self) -> dict[str, Any]:
        """The solver as the manifest records it: ``{name, rtol, atol}`` or ``{name, steps}``."""
        if self.solver == "rk45":
            return {"name": "rk45", "rtol": self.rtol, "atol": self.atol}
        return {"name": self.solver, "steps": self.steps}

    def describe(self) -> str:
        """``rk45 (rtol 1e-05, atol 1e-05)`` or ``heun, 100 steps``."""
        if self.solver == "rk45":
            return f"rk45 (rtol {self.rtol:g}, atol {self.atol:g})"
        return f"{self.solver}, {self.steps} steps"


# Manifest entries that must agree between the command and a folder it resumes.
_IDENTITY = ("source.config_sha256", "source.step", "source.weights", "source.method", "seed", "solver",
             "shape", "num_classes", "is_latent", "num_pairs", "shard_size")


def _get(m: dict, key: str) -> Any:
    for part in key.split("."):
        m = m.get(part) if isinstance(m, dict) else None
    return m


def check_same_job(old: dict, new: dict, path: Path) -> None:
    """UserError naming the first identity entry where an existing manifest differs from this job."""
    for key in _IDENTITY:
        a, b = _get(old, key), _get(new, key)
        if a != b:
            raise UserError(f"{path} was written by another command: {key} is {a!r} there but {b!r} here; "
                            "use another --out folder, or the options that made it")


def _intact(path: Path, entry: dict | None, start: int, stop: int) -> bool:
    """Whether the manifest lists shard `path` for pairs [start, stop) and its bytes have that sha256."""
    return (entry is not None and (entry.get("start"), entry.get("stop")) == (start, stop) and path.is_file()
            and sha256_file(path) == entry["sha256"])


def _write_manifest(out: Path, manifest: dict) -> None:
    with atomic_files("the pairs manifest") as files:
        files.tmp(out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


@torch.no_grad()
def solve_pairs(net: nn.Module, start: int, stop: int, job: PairsJob, *, shape: tuple[int, ...],
                num_classes: int, device: str | torch.device = "cpu", bar=None,
                ) -> tuple[dict[str, torch.Tensor], int, float]:
    """Pairs [start, stop), in batches aligned to multiples of ``job.batch_size`` (``bar``: a progress
    bar moved by each batch's pairs).

    Returns:
        ``(tensors, nfe, nfe_per_pair)``: ``noise`` and ``sample`` float32 ``[n, *shape]`` (CPU), ``y``
        long ``[n]`` when ``num_classes > 0``; network batch evaluations summed over the batches; and
        evaluations per pair (the batches' NFE weighted by their sizes).
    """
    noises, samples, labels, nfe, weighted = [], [], [], 0, 0.0
    lo = start
    while lo < stop:
        hi = min(stop, (lo // job.batch_size + 1) * job.batch_size)
        e = noise_for(lo, hi, shape, job.seed)
        y = labels_for(lo, hi, num_classes, None)
        x, n_eval = solve_to_data(net, e.to(device), None if y is None else y.to(device), solver=job.solver,
                                  steps=job.steps, rtol=job.rtol, atol=job.atol,
                                  net_kwargs=generation_kwargs(net, hi - lo, device))
        x = x.float().cpu()
        if not torch.isfinite(x).all():
            raise UserError(f"the model's ODE gave NaN or infinite samples for pairs [{lo}, {hi}): "
                            "the run cannot make pairs")
        noises.append(e)
        samples.append(x)
        if y is not None:
            labels.append(y)
        nfe += n_eval
        weighted += n_eval * (hi - lo)
        if bar is not None:
            bar.update(hi - lo)
        lo = hi
    tensors = {"noise": torch.cat(noises).contiguous(), "sample": torch.cat(samples).contiguous()}
    if num_classes:
        tensors["y"] = torch.cat(labels).contiguous()
    return tensors, nfe, weighted / (stop - start)


def write_pairs(net: nn.Module, out_dir: str | Path, job: PairsJob, *, source: dict[str, Any],
                device: str | torch.device = "cpu", echo: Callable[[str], None] = print,
                progress: bool | None = None) -> dict[str, Any]:
    """Write (or finish) the pairs folder ``out_dir`` for ``job`` from the velocity network ``net``.

    Args:
        net: Velocity network at ``h = 0`` with ``meanflow_shape`` / ``meanflow_num_classes`` (as
            ``load_generator`` returns it), on ``device``, in eval mode.
        out_dir: The folder (created if needed; one that holds files but no manifest is refused). What
            this call created (the folder, its manifest) is removed when it fails before its first shard.
        job: What to write.
        source: Where the network came from, recorded under ``source`` in the manifest; the keys
            ``config_sha256``, ``step``, ``weights`` and ``method`` must match on resume.
        device: Where the ODE is solved.
        echo: Progress lines (one per shard) and the final summary.
        progress: A bar over the pairs to solve (see ``meanflow.utils.progress``).

    Returns:
        The final manifest (``complete`` true).

    Raises:
        UserError: A folder made by another command or not a pairs folder, an unwritable folder or
            disk, or a model whose ODE diverges.
    """
    shape, classes = model_info(net)
    out = Path(out_dir)
    is_latent = bool(getattr(net, "meanflow_is_latent", False))
    fresh = {"format": FORMAT, "source": source, "seed": job.seed, "solver": job.solver_record(),
             "shape": list(shape), "num_classes": classes, "is_latent": is_latent,
             "num_pairs": job.num_pairs, "shard_size": job.shard_size, "batch_size": job.batch_size,
             "shards": [], "nfe_total": 0, "nfe_mean": None, "complete": False}
    created, fresh_manifest = not out.exists(), not (out / MANIFEST).exists()
    if not fresh_manifest:
        manifest = read_manifest(out)
        check_same_job(manifest, fresh, out / MANIFEST)
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            what = "is not a folder" if not out.is_dir() else "holds files but no manifest.json"
            raise UserError(f"--out {out} {what}: give a new or empty folder for the pairs")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create --out folder {out}: {e.strerror or e}") from None
        manifest = fresh
    try:
        if not manifest["shards"]:
            _write_manifest(out, manifest)
        _write_shards(net, out, job, manifest, shape, classes, device, echo, progress)
    except BaseException:
        if fresh_manifest and not manifest["shards"]:  # leave nothing of this call behind
            if created:
                shutil.rmtree(out, ignore_errors=True)
            else:
                (out / MANIFEST).unlink(missing_ok=True)
        raise
    return manifest


def _write_shards(net: nn.Module, out: Path, job: PairsJob, manifest: dict, shape, classes, device, echo,
                  progress) -> None:
    """Solve and write every shard the manifest does not list as intact; complete the manifest."""
    from meanflow.utils.progress import progress_bar

    ranges = shard_ranges(job.num_pairs, job.shard_size)
    done = {s["file"]: s for s in manifest["shards"]}
    todo = [(k, lo, hi) for k, (lo, hi) in enumerate(ranges)
            if not _intact(out / shard_name(k), done.get(shard_name(k)), lo, hi)]
    for k, (lo, hi) in enumerate(ranges):
        if all(k != j for j, _, _ in todo):
            echo(f"shard {k + 1}/{len(ranges)} [{lo}, {hi}): complete (sha256 verified), kept")
    bar = progress_bar(sum(hi - lo for _, lo, hi in todo), "reflow-pairs", "pair", progress)
    t_start = time.perf_counter()
    try:
        for k, lo, hi in todo:
            name, where = shard_name(k), f"shard {k + 1}/{len(ranges)} [{lo}, {hi})"
            if done.pop(name, None) is not None:
                echo(f"{where}: does not match its sha256 in {MANIFEST}, computing it again")
            t0 = time.perf_counter()
            tensors, nfe, per_pair = solve_pairs(net, lo, hi, job, shape=shape, num_classes=classes,
                                                 device=device, bar=bar)
            with atomic_files("a pairs shard") as files:
                # One metadata entry: safetensors writes several in no fixed order, and the bytes (the
                # sha256) of a shard must be a function of its pairs.
                meta = json.dumps({"format": FORMAT, "start": lo, "stop": hi}, sort_keys=True)
                save_safetensors(tensors, files.tmp(out / name), metadata={"meanflow_pairs": meta})
            done[name] = {"file": name, "start": lo, "stop": hi, "sha256": sha256_file(out / name),
                          "batch_size": job.batch_size, "nfe": nfe, "nfe_per_pair": per_pair}
            manifest["shards"] = [done[n] for n in sorted(done)]
            _write_manifest(out, manifest)
            dt = max(time.perf_counter() - t0, 1e-9)
            echo(f"{where}: {(hi - lo) / dt:.1f} pairs/s, NFE {per_pair:.1f} per pair")
    finally:
        if bar is not None:
            bar.close()
    entries = [done[n] for n in sorted(done)]
    manifest["shards"] = entries
    manifest["nfe_total"] = sum(int(s.get("nfe", 0)) for s in entries)
    manifest["nfe_mean"] = sum(float(s.get("nfe_per_pair", 0.0)) * (s["stop"] - s["start"])
                               for s in entries) / job.num_pairs
    manifest["complete"] = True
    _write_manifest(out, manifest)
    rate = sum(hi - lo for _, lo, hi in todo) / max(time.perf_counter() - t_start, 1e-9)
    echo(f"{job.num_pairs} pairs in {out} ({len(todo)} shard(s) written, {len(ranges) - len(todo)} kept; "
         f"{job.describe()}): {rate:.1f} pairs/s, mean NFE {manifest['nfe_mean']:.1f} per pair")
