"""The loss curve is drawn with Pillow, so a bare install (no matplotlib) writes loss.png."""

import json
import sys

import numpy as np
from PIL import Image

from meanflow.utils.line_chart import LINE, W, _fmt, _ticks
from meanflow.utils.plot import plot_loss


def _log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')  # torn last line
    return path


def test_loss_png_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    rows = [{"step": s, "loss": 1.0 / (1 + s), "mse": 5.0 - 0.01 * s} for s in range(0, 500, 50)]
    rows.append({"step": 500, "loss": float("nan"), "mse": 0.5})
    out = plot_loss(_log(tmp_path / "log.jsonl", rows), tmp_path / "loss.png")
    assert out == tmp_path / "loss.png"
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] == 2 * W
    rgb = np.asarray(img.convert("RGB"))
    assert (rgb == np.array(LINE, dtype=np.uint8)).all(axis=2).sum() > 100  # the curves are drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "loss.png"]


def test_one_panel_per_present_key_and_nothing_for_an_empty_log(tmp_path):
    out = plot_loss(_log(tmp_path / "log.jsonl", [{"step": 1, "mse": 2.0}]), tmp_path / "a.png")
    assert Image.open(out).size[0] == W
    assert plot_loss(_log(tmp_path / "empty.jsonl", [{"step": 1, "lr": 0.1}]), tmp_path / "b.png") is None
    assert not (tmp_path / "b.png").exists()


def test_ticks_and_labels():
    assert _ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    assert _fmt(1000, 200) == "1000" and _fmt(0.99994, 0.00002) == "0.99994" and _fmt(2e7, 1e7) == "2.00e+07"
