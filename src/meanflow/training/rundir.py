"""Numbered run folders: runs/00000-digits-meanflow, runs/00001-..., as in NVlabs/edm."""

from __future__ import annotations

import re
from pathlib import Path

RUN_RE = re.compile(r"^(\d{5,})-")


def next_run_dir(out_dir: str | Path, desc: str) -> Path:
    """Create and return `out_dir/<id>-<desc>` with id one more than the largest existing one.

    Creation uses mkdir(exist_ok=False) and retries, so two runs started at once get two folders.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    while True:
        ids = [int(m.group(1)) for p in out.iterdir() if (m := RUN_RE.match(p.name))]
        path = out / f"{max(ids, default=-1) + 1:05d}-{desc}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
