"""Line charts drawn with Pillow (a base dependency): the loss curves of a run on any install."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

W, H = 480, 340  # one panel
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 40
LINE = (31, 119, 180)
GRID = (225, 225, 225)
TEXT = (40, 40, 40)


def _fmt(v: float, step: float | None = None) -> str:
    """A tick label: as many decimals as the tick spacing ``step`` needs; scientific when huge or tiny."""
    if v == 0:
        return "0"
    if abs(v) >= 1e6 or (step is not None and step < 1e-6) or (step is None and abs(v) < 1e-3):
        return f"{v:.2e}"
    if step is None:
        return f"{v:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{v:.{decimals}f}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]`` (linear)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _panel(title: str, xs: list[float], ys: list[float]) -> Image.Image:
    """One panel: ``ys`` against ``xs``, log-scale y when the positive values span more than a decade."""
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    log = min(ys) > 0 and max(ys) > 10 * min(ys)
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    fy = [f(y) for y in ys if math.isfinite(y)]
    if not fy:
        fy = [0.0]
    y0, y1 = min(fy), max(fy)
    if y1 - y0 < 1e-12 * max(1.0, abs(y0)):  # a flat curve (also at 1e30, where y0 - 0.5 == y0)
        pad = 0.5 * max(1.0, abs(y0))
        y0, y1 = y0 - pad, y1 + pad
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x1 = x0 + 1
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float, y: float) -> tuple[float, float]:
        return LEFT + (x - x0) / (x1 - x0) * pw, TOP + (1 - (y - y0) / (y1 - y0)) * ph

    yticks = [float(k) for k in range(math.ceil(y0), math.floor(y1) + 1)] if log else _ticks(y0, y1)
    ystep = None if log or len(yticks) < 2 else yticks[1] - yticks[0]
    for t in yticks:
        _, yy = px(x0, t)
        d.line([(LEFT, yy), (LEFT + pw, yy)], fill=GRID)
        d.text((4, yy - 6), _fmt(10**t if log else t, ystep), fill=TEXT, font=font)
    xticks = _ticks(x0, x1)
    xstep = xticks[1] - xticks[0] if len(xticks) > 1 else 1.0
    for t in xticks:
        xx, _ = px(t, y0)
        d.line([(xx, TOP), (xx, TOP + ph)], fill=GRID)
        d.text((xx - 10, TOP + ph + 6), _fmt(t, xstep), fill=TEXT, font=font)
    d.rectangle([LEFT, TOP, LEFT + pw, TOP + ph], outline=TEXT)
    pts = [px(x, f(y)) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not log)]
    if len(pts) > 1:
        d.line(pts, fill=LINE, width=2)
    elif pts:
        d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=LINE)
    d.text((LEFT, 8), title + (" (log scale)" if log else ""), fill=TEXT, font=font)
    d.text((LEFT + pw // 2 - 12, H - 16), "step", fill=TEXT, font=font)
    return img


def line_chart(series: dict[str, list[tuple[float, float]]]) -> Image.Image:
    """Panels side by side, one per ``name -> [(step, value), ...]`` (non-empty), as one RGB image."""
    panels = [_panel(name, [p[0] for p in pts], [p[1] for p in pts]) for name, pts in series.items()]
    out = Image.new("RGB", (W * len(panels), H), "white")
    for i, p in enumerate(panels):
        out.paste(p, (i * W, 0))
    return out
