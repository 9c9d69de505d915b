"""Results as data: one JSON object per line, one line per measurement, under ``docs/results/*.jsonl``.

Fields of every record (``KEY`` identifies the measurement; a later record with the same key replaces
an earlier one when read):

* ``setup``: the base settings' short name (records of one setup are compared with each other);
* ``dataset``, ``method`` (the entry name), ``variant`` (a named non-default setting, or null);
* ``run_steps``: optimizer steps the run was planned for (schedules that read training progress
  depend on it); ``train_steps``: steps trained when measured (0 for the ``data`` noise floor);
* ``seed``; ``nfe``: sampling steps (network evaluations per sample for fixed-step samplers; the
  measured average for adaptive ones, see ``steps``); ``metric``, ``value``;
* ``commit`` (git, ``+`` when src/ had uncommitted changes), ``device`` (where the measurement ran),
  ``train_device``, ``wall_s`` (training wall time to reach ``train_steps``), ``eval_s``, ``date``, plus
  metric-specific extras (``kid_std``, ``n``, ``steps``).

Appends take an exclusive lock on the file and write whole lines, so parallel workers never interleave.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "docs" / "results"
KEY = ("setup", "dataset", "method", "variant", "run_steps", "train_steps", "seed", "nfe", "metric")
REQUIRED = (*KEY, "value", "commit", "device", "wall_s")


def key_of(rec: dict) -> tuple:
    """The identity of a measurement (see ``KEY``)."""
    return tuple(rec.get(k) for k in KEY)


def append(path: Path, recs: Iterable[dict]) -> None:
    """Append records to the JSON-lines file `path` (created with its folder), under a file lock."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs)
    if not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load(paths: Iterable[Path]) -> list[dict]:
    """Every record of `paths` (files or folders of ``*.jsonl``), the last of each key kept, in order.
    A line that is not a complete JSON object (a crash mid-write) is skipped."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else ([p] if p.is_file() else [])
    out: dict[tuple, dict] = {}
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and all(k in rec for k in KEY):
                out.pop(key_of(rec), None)
                out[key_of(rec)] = rec
    return list(out.values())


def merge(sources: Iterable[Path], results_dir: Path) -> dict[str, tuple[int, int]]:
    """Append to ``results_dir/<name>.jsonl`` each record of the source file of that name (files, or
    folders of ``*.jsonl``) whose key it lacks; ``name -> (appended, already there)``. Records measured
    on another machine (a GPU lease, a cluster) join this way without duplicates; where both hold a key,
    the one here stays."""
    files: list[Path] = []
    for p in sources:
        p = Path(p)
        if not p.exists():
            raise ValueError(f"no such file or folder: {p}")
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    out = {}
    for f in files:
        if f.suffix != ".jsonl":
            raise ValueError(f"{f}: not a .jsonl records file")
        dest = results_dir / f.name
        have = {key_of(r) for r in load([dest])}
        incoming = load([f])
        new = [r for r in incoming if key_of(r) not in have]
        append(dest, new)
        out[f.name] = (len(new), len(incoming) - len(new))
    return out


def git_commit() -> str:
    """Short hash of HEAD, with ``+`` when src/ or benchmarks/ have uncommitted changes; "unknown"
    outside a git checkout. ``$MEANFLOW_SUITE_COMMIT`` overrides it (a copy of the tree without its
    ``.git``, e.g. on a lent GPU machine, is told the commit it was copied from)."""
    if os.environ.get("MEANFLOW_SUITE_COMMIT"):
        return os.environ["MEANFLOW_SUITE_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src", "benchmarks"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: str = "cpu") -> str:
    """The CPU's model name and visible cores, or the GPU's name."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores visible)"
