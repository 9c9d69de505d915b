"""The ``pairs`` dataset: coupled (noise, sample) pairs of a trained flow, for reflow and distillation.

A pairs folder is written by ``meanflow reflow-pairs`` (:mod:`meanflow.reflow_pairs`):

    DIR/manifest.json                  what made the pairs, and the sha256 of every finished shard
    DIR/pairs-00000.safetensors        pairs [0, M): tensors noise [M, *S], sample [M, *S], y [M] (long,
    DIR/pairs-00001.safetensors        pairs [M, 2M)                  only for a class-conditional model)
    ...

Pair i is ``(e_i, x_i)``: ``e_i`` the noise of sample i of ``meanflow.sampling.noise_for`` with the
manifest's seed, ``x_i`` what the model's ODE carries it to at t = 0, ``y_i = i % num_classes``.
Reading checks the manifest, that every shard is there and whole (sha256), and each tensor's shape;
the dataset is :class:`ImageData` or :class:`PointData` with ``x`` the samples and ``noise`` the
coupled noise, row for row. It has one split (``train``): ``data.split=all`` reads it once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from meanflow.data.types import ImageData, PointData
from meanflow.errors import UserError

FORMAT = "meanflow-pairs-v1"
MANIFEST = "manifest.json"
FINISH_HINT = "run the same `meanflow reflow-pairs` command again to finish or repair it"


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``pairs-00000.safetensors``."""
    return f"pairs-{index:05d}.safetensors"


def shard_ranges(num_pairs: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the shards: ``ceil(num_pairs / shard_size)`` ranges of
    ``shard_size`` pairs, the last one shorter."""
    return [(lo, min(lo + shard_size, num_pairs)) for lo in range(0, num_pairs, shard_size)]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a pairs folder, with its fields' types checked.

    Raises:
        UserError: no manifest, unreadable JSON, another format, or a field missing / mistyped.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"pairs: {folder} has no {MANIFEST}: not a folder written by `meanflow reflow-pairs`")
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"pairs: cannot read {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise UserError(f"pairs: {path} is not a pairs manifest (no 'format: {FORMAT}')")
    ints = {"num_pairs": 1, "shard_size": 1, "num_classes": 0, "seed": 0}
    for key, low in ints.items():
        v = m.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise UserError(f"pairs: {path}: {key} must be an integer >= {low}, got {v!r}")
    shape = m.get("shape")
    if not (isinstance(shape, list) and len(shape) in (1, 3) and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise UserError(f"pairs: {path}: shape must be [D] or [C, H, W], got {shape!r}")
    shards = m.get("shards")
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("sha256"), str) for s in shards):
        raise UserError(f"pairs: {path}: shards must be a list of {{file, start, stop, sha256}} entries")
    return m


def read_shard(path: Path, start: int, stop: int, shape: tuple[int, ...], num_classes: int,
               sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one shard, checked: ``noise`` and ``sample`` float32 ``[stop - start, *shape]``,
    ``y`` long ``[stop - start]`` in ``[0, num_classes)`` when ``num_classes > 0``; with ``sha256``
    the file's hash first.

    Raises:
        UserError: missing, corrupt (hash) or malformed shard.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"pairs: shard {path} is missing; {FINISH_HINT}")
    if sha256 is not None and sha256_file(path) != sha256:
        raise UserError(f"pairs: shard {path} is corrupt (its sha256 differs from {MANIFEST}); {FINISH_HINT}")
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"pairs: cannot read shard {path}: {str(e).splitlines()[0]}") from None
    n = stop - start
    want = {"noise": ([n, *shape], torch.float32), "sample": ([n, *shape], torch.float32)}
    if num_classes:
        want["y"] = ([n], torch.long)
    for key, (size, dtype) in want.items():
        v = t.get(key)
        if v is None or list(v.shape) != size or v.dtype != dtype:
            got = "nothing" if v is None else f"{v.dtype} {list(v.shape)}"
            raise UserError(f"pairs: shard {path}: {key} must be {dtype} {size}, found {got}")
    if num_classes and n and (int(t["y"].min()) < 0 or int(t["y"].max()) >= num_classes):
        raise UserError(f"pairs: shard {path}: labels outside [0, {num_classes})")
    return t


def load_pairs(split: str = "train", data_dir: str | os.PathLike | None = None, *,
               path: str | os.PathLike | None = None) -> ImageData | PointData:
    """Load a complete pairs folder (see the module docstring).

    Args:
        split: ``"train"`` (the only split).
        data_dir: the pairs folder, if ``path`` is not given (CLI: ``--data-dir DIR``).
        path: the pairs folder.

    Returns:
        ImageData (x, noise float32 [N, C, H, W]) or PointData (x, noise float32 [N, D]); ``y`` long
        [N] (``i % num_classes``) for pairs of a class-conditional model, else None.

    Raises:
        UserError: no folder given or found, no / bad manifest, an unfinished folder, a missing,
            corrupt (sha256) or malformed shard.
    """
    folder = path if path is not None else data_dir
    if folder is None:
        raise UserError("pairs: give the folder written by `meanflow reflow-pairs` with data.data_dir=DIR "
                        "(CLI: --data-dir DIR)")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"pairs: {folder} is not a folder (give the --out folder of `meanflow reflow-pairs`)")
    m = read_manifest(folder)
    shape, classes = tuple(m["shape"]), m["num_classes"]
    ranges = shard_ranges(m["num_pairs"], m["shard_size"])
    done = {s.get("file"): s for s in m["shards"]}
    if len(done) < len(ranges) or not m.get("complete", False):
        raise UserError(f"pairs: {folder} is unfinished ({len(done)} of {len(ranges)} shards); {FINISH_HINT}")
    parts: dict[str, list[torch.Tensor]] = {"noise": [], "sample": [], "y": []}
    for k, (lo, hi) in enumerate(ranges):
        entry = done.get(shard_name(k))
        if entry is None or (entry.get("start"), entry.get("stop")) != (lo, hi):
            raise UserError(f"pairs: {folder / MANIFEST} lists no shard {shard_name(k)} for pairs "
                            f"[{lo}, {hi}); {FINISH_HINT}")
        t = read_shard(folder / shard_name(k), lo, hi, shape, classes, entry["sha256"])
        for key in parts:
            if key in t:
                parts[key].append(t[key])
    x, noise = torch.cat(parts["sample"]), torch.cat(parts["noise"])
    y = torch.cat(parts["y"]) if classes else None
    if not (torch.isfinite(x).all() and torch.isfinite(noise).all()):
        raise UserError(f"pairs: {folder} holds NaN or infinite values (a diverged model?)")
    if len(shape) == 1:
        return PointData(x=x, y=y, num_classes=classes, name="pairs", noise=noise)
    return ImageData(x=x, y=y, num_classes=classes, name="pairs", is_latent=bool(m.get("is_latent", False)),
                     noise=noise)
