"""Reading a run folder while a process writes it: run folder, checkpoints, temp files, log records."""

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from benchmarks.faults.settings import CKPT_RE, RUN_RE


def find_run_dir(out_dir: Path) -> Path | None:
    try:
        runs = sorted(p for p in out_dir.iterdir() if RUN_RE.match(p.name) and p.is_dir())
    except OSError:
        return None
    return runs[-1] if runs else None


def checkpoints(run_dir: Path | None) -> dict[int, Path]:
    """{step: path} of the complete checkpoints of a run folder."""
    try:
        names = os.listdir(run_dir / "checkpoints") if run_dir is not None else []
    except OSError:
        return {}
    return {int(m.group(1)): run_dir / "checkpoints" / n for n in names if (m := CKPT_RE.match(n))}


def is_temp(name: str) -> bool:
    return name.startswith(".") or ".tmp" in name


def ckpt_temps(run_dir: Path | None) -> list[str]:
    try:
        return sorted(n for n in os.listdir(run_dir / "checkpoints") if is_temp(n)) if run_dir else []
    except OSError:
        return []


def run_temps(run_dir: Path) -> list[str]:
    """Hidden / temp files of the run folder outside checkpoints/ (relative paths)."""
    out = []
    for root, _, files in os.walk(run_dir):
        rel = Path(root).relative_to(run_dir)
        if rel.parts[:1] == ("checkpoints",):
            continue
        out += [str(rel / n) for n in files if is_temp(n)]
    return sorted(out)


def read_log(run_dir: Path) -> tuple[list[dict], int]:
    """(records, unparseable lines) of log.jsonl."""
    try:
        lines = (run_dir / "log.jsonl").read_text().splitlines()
    except OSError:
        return [], 0
    recs, bad = [], 0
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            recs.append(rec)
        else:
            bad += 1
    return recs, bad


def is_eval(rec: dict) -> bool:
    return any(k.startswith("eval/") for k in rec)


def missing_outputs(run_dir: Path) -> list[str]:
    miss = [n for n in ("samples.png", "loss.png", "metrics.json") if not (run_dir / n).is_file()]
    evals = sum(is_eval(r) for r in read_log(run_dir)[0])
    if evals != 1:
        miss.append(f"{evals} eval records")
    return miss


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as f:
        state = json.loads((f.metadata() or {})["state"])
    return load_file(str(path)), state


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(size, mtime_ns, inode) of `path` (changes whenever it is written), or None when absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino
