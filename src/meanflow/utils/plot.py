"""Loss curves from the JSONL log of a run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from meanflow.utils.files import atomic_files
from meanflow.utils.line_chart import line_chart


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (a run killed mid-write) is skipped."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_loss(log_path: str | Path, out_path: str | Path, keys: tuple[str, ...] = ("loss", "mse"),
              echo: Callable[[str], None] | None = None) -> Path | None:
    """Plot each scalar of `keys` present in the log against `step`, one panel each, into a PNG.

    'loss' is what is optimised (for MeanFlow the adaptively weighted loss, close to 1 by design);
    'mse' is the unweighted squared error, the more readable curve. Log-scale y when the values span
    more than a decade. Drawn with Pillow (a base dependency), so every install writes it; `echo` is
    kept for callers and not used.
    Returns the path written, or None when the log has none of `keys`.
    """
    records = read_jsonl(log_path)
    series = {k: [(r["step"], float(r[k])) for r in records if k in r and "step" in r] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    out_path = Path(out_path)
    with atomic_files(user_errors=False) as files:
        line_chart(series).save(files.tmp(out_path), format="PNG")
    return out_path
