"""The on-disk latent cache: a JSON manifest and fixed-size `.npy` shards, memory-mapped for training.

Layout of a cache folder::

    manifest.json                 what the cache holds (below); written first, checked on resume
    shards/00000.mean.npy         posterior mean  [S, F, C, h, w]  (float16 by default, or float32)
    shards/00000.std.npy          posterior std   [S, F, C, h, w]  (same dtype; unscaled, no 0.18215)
    shards/00000.labels.npy       class ids       [S] int64
    shards/00000.done             written last: the shard is complete (re-runs skip it)

Image i of the sorted file list is row i % S of shard i // S (the last shard may be shorter);
F = 2 stores the image and its horizontal flip (f = 1), F = 1 the image only. The manifest records
`format`, `vae` (name, fingerprint, scale), `crop_size`, `flips` (F), `dtype`, `latent_shape`
[C, h, w], `classes` (folder names, label = index), `count`, `shard_size`, `num_shards`, `files`
(sha256 of the relative paths in order) and `source`. Every shard file is written to a temp name
and renamed, so a killed run leaves only complete files; a shard without `.done` is redone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from meanflow.errors import UserError
from meanflow.latent.vae import VaeIdentity
from meanflow.utils.files import atomic_files

FORMAT = "meanflow-latent-cache-v1"
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class Manifest:
    """The contents of `manifest.json` (see the module docstring)."""

    vae: VaeIdentity
    crop_size: int
    flips: int
    dtype: str
    latent_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    count: int
    shard_size: int
    files: str
    source: str = ""

    @property
    def num_shards(self) -> int:
        return math.ceil(self.count / self.shard_size)

    def shard_rows(self, k: int) -> tuple[int, int]:
        """Images [start, stop) of shard `k`."""
        return k * self.shard_size, min((k + 1) * self.shard_size, self.count)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(format=FORMAT, vae=self.vae.to_dict(), latent_shape=list(self.latent_shape),
                 classes=list(self.classes), num_shards=self.num_shards)
        return d


def manifest_path(root: str | Path) -> Path:
    return Path(root) / "manifest.json"


def shard_file(root: str | Path, k: int, kind: str) -> Path:
    """`shards/<k>.<kind>.npy` (kind: mean, std, labels) or `shards/<k>.done` (kind 'done')."""
    suffix = ".done" if kind == "done" else f".{kind}.npy"
    return Path(root) / "shards" / f"{k:05d}{suffix}"


def write_manifest(root: str | Path, m: Manifest) -> None:
    path = manifest_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_files("the cache manifest") as files:
        files.tmp(path).write_text(json.dumps(m.to_dict(), indent=2) + "\n")


def read_manifest(root: str | Path) -> Manifest:
    """The manifest of cache `root`; a missing or malformed one is a one-line UserError."""
    path = manifest_path(root)
    if not Path(root).is_dir():
        raise UserError(f"latent cache {root} is not a folder (make one with `meanflow encode`)")
    if not path.is_file():
        raise UserError(f"{root} is not a latent cache: no manifest.json (make one with `meanflow encode`)")
    try:
        d = json.loads(path.read_text())
        if d.get("format") != FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, expected {FORMAT!r}")
        m = Manifest(vae=VaeIdentity.from_dict(d["vae"]), crop_size=int(d["crop_size"]),
                     flips=int(d["flips"]), dtype=str(d["dtype"]),
                     latent_shape=tuple(int(v) for v in d["latent_shape"]),
                     classes=tuple(str(c) for c in d["classes"]), count=int(d["count"]),
                     shard_size=int(d["shard_size"]), files=str(d["files"]), source=str(d.get("source", "")))
        if m.flips not in (1, 2) or m.dtype not in DTYPES or len(m.latent_shape) != 3 or m.count < 1 \
                or m.shard_size < 1:
            raise ValueError("flips / dtype / latent_shape / count / shard_size out of range")
    except (OSError, ValueError, KeyError, TypeError, UserError) as e:
        raise UserError(f"{path}: not a valid latent cache manifest ({e})") from None
    return m


def shard_complete(root: str | Path, k: int) -> bool:
    return shard_file(root, k, "done").is_file()


def write_shard(root: str | Path, k: int, mean: np.ndarray, std: np.ndarray, labels: np.ndarray) -> None:
    """Write shard `k` (arrays [n, F, C, h, w], labels [n]) atomically, then its `.done` marker."""
    folder = Path(root) / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_files(f"latent cache shard {k}") as files:
        np.save(files.tmp(shard_file(root, k, "mean")), mean)
        np.save(files.tmp(shard_file(root, k, "std")), std)
        np.save(files.tmp(shard_file(root, k, "labels")), labels.astype(np.int64))
    with atomic_files(f"latent cache shard {k}") as files:
        files.tmp(shard_file(root, k, "done")).write_text(json.dumps({"count": int(len(labels))}) + "\n")


def open_cache(root: str | Path) -> tuple[Manifest, list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Memory-map every shard of a complete cache.

    Returns:
        (manifest, means, stds, labels): `means[k]`, `stds[k]` read-only memmaps [n_k, F, C, h, w];
        labels int64 [count] in memory.
    """
    m = read_manifest(root)
    missing = [k for k in range(m.num_shards) if not shard_complete(root, k)]
    if missing:
        shown = ", ".join(str(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(f"latent cache {root} is incomplete: {len(missing)} of {m.num_shards} shards missing "
                        f"({shown}); re-run `meanflow encode` to finish it")
    means, stds, labels = [], [], []
    for k in range(m.num_shards):
        lo, hi = m.shard_rows(k)
        want = (hi - lo, m.flips, *m.latent_shape)
        arrs = []
        for kind in ("mean", "std", "labels"):
            path = shard_file(root, k, kind)
            try:
                a = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise UserError(f"{path}: unreadable cache shard ({e})") from None
            shape, dtype = ((hi - lo,), np.int64) if kind == "labels" else (want, np.dtype(m.dtype))
            if a.shape != shape or a.dtype != dtype:
                raise UserError(f"{path}: expected {np.dtype(dtype).name} {list(shape)}, found "
                                f"{a.dtype} {list(a.shape)}; the cache is damaged (delete the shard and "
                                "re-run `meanflow encode`)")
            arrs.append(a)
        means.append(arrs[0])
        stds.append(arrs[1])
        labels.append(np.asarray(arrs[2]))
    y = np.concatenate(labels)
    if len(y) and (y.min() < 0 or y.max() >= len(m.classes)):
        raise UserError(f"latent cache {root}: labels outside [0, {len(m.classes) - 1}]")
    return m, means, stds, y
