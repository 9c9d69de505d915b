"""Loss curves from the JSONL log of a run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from meanflow.utils.files import atomic_files


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
    more than a decade.
    matplotlib is optional (`pip install matplotlib`, or the `plot` extra): without it nothing is
    drawn and `echo` (when given) gets a one-line notice.
    Returns the path written, or None when nothing was drawn.
    """
    records = read_jsonl(log_path)
    series = {k: [(r["step"], r[k]) for r in records if k in r and "step" in r] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    try:
        import matplotlib
    except ImportError:
        if echo is not None:
            echo(f"no loss plot: matplotlib is not installed (pip install matplotlib); the losses are in "
                 f"{log_path}")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.6), dpi=100, squeeze=False)
    for ax, (key, pts) in zip(axes[0], series.items()):
        steps, vals = zip(*pts)
        ax.plot(steps, vals, lw=1.2)
        if min(vals) > 0 and max(vals) > 10 * min(vals):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_path = Path(out_path)
    try:
        with atomic_files(user_errors=False) as files:
            fig.savefig(files.tmp(out_path), format="png")
    finally:
        plt.close(fig)
    return out_path
