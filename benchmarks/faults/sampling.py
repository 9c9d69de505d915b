"""Sampling trials: SIGKILL `meanflow sample` while it writes; each final name must then be absent or
hold the complete, reference-equal output."""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.faults.process import Proc
from benchmarks.faults.reference import Context
from benchmarks.faults.run_files import is_temp
from benchmarks.faults.settings import POLL_S, SAMPLE_N


def sample_args(run_dir: Path, out: Path) -> list[str]:
    return ["sample", str(run_dir), "-n", str(SAMPLE_N), "--out", str(out)]


def read_sample(stem: Path) -> tuple[dict[str, np.ndarray] | None, np.ndarray | None]:
    """(npz arrays, png pixels) of `stem`.npz / .png; raises when a present file does not load."""
    arrays = pixels = None
    npz, png = stem.with_suffix(".npz"), stem.with_suffix(".png")
    if npz.exists():
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    if png.exists():
        with Image.open(png) as im:
            im.load()
            pixels = np.asarray(im).copy()
    return arrays, pixels


def sample_reference(ctx: Context) -> dict:
    ref = ctx.ref
    assert ref is not None
    d = ctx.workdir / "sampling" / "reference"
    d.mkdir(parents=True, exist_ok=True)
    with Proc(sample_args(ref.run_dir, d / "s"), d / "output.txt", ctx.env, ctx.timeout) as proc:
        rc = proc.wait()
        seconds = proc.elapsed()
        if rc != 0:
            raise RuntimeError(f"reference sampling failed (exit {rc}):\n{proc.output()[-2000:]}")
    arrays, pixels = read_sample(d / "s")
    if arrays is None or pixels is None:
        raise RuntimeError("reference sampling wrote no .npz / .png")
    ctx.sample_ref = {"arrays": arrays, "pixels": pixels, "seconds": seconds}
    return ctx.sample_ref


@dataclass
class SampleResult:
    index: int
    mode: str
    kill_s: float = 0.0
    state: str = ""
    temps: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def run_sample_trial(ctx: Context, index: int, mode: str, u: float) -> SampleResult:
    """Kill `meanflow sample` (mode uniform: at u x 1.1 x the reference duration; temp: when a temp
    output appears; final-name: when s.npz or s.png appears), then check what it left."""
    ref = ctx.sample_ref
    assert ref is not None, "sample_reference(ctx) first"
    d = ctx.workdir / "sampling" / f"trial-{index:03d}"
    d.mkdir(parents=True, exist_ok=True)
    res = SampleResult(index, mode)
    with Proc(sample_args(ctx.ref.run_dir, d / "s"), d.parent / f"trial-{index:03d}.txt", ctx.env,
              ctx.timeout) as proc:
        outcome = "exited"
        while proc.alive():
            now = proc.elapsed()
            if now > ctx.timeout:
                proc.kill()
                res.failures.append("timed out")
                break
            names = os.listdir(d)
            hit = {"uniform": now >= u * 1.1 * ref["seconds"],
                   "temp": any(is_temp(n) for n in names),
                   "final-name": any(n in ("s.npz", "s.png") for n in names)}[mode]
            if hit:
                res.kill_s = proc.elapsed()
                outcome = "killed" if proc.kill() else "exited"
                break
            time.sleep(POLL_S if mode == "uniform" else 0.0002)
        proc.wait()
    names = os.listdir(d)
    res.temps = sum(is_temp(n) for n in names)
    final = sorted(n for n in names if n in ("s.npz", "s.png"))
    res.state = "exited" if outcome != "killed" else ("+".join(final) or "nothing") + (
        " +temps" if res.temps else "")
    try:
        arrays, pixels = read_sample(d / "s")
    except Exception as e:
        res.failures.append(f"a final name holds an unloadable file: {type(e).__name__}: {e}")
        return res
    if arrays is not None and (set(arrays) != set(ref["arrays"]) or any(
            not np.array_equal(arrays[k], ref["arrays"][k]) for k in arrays)):
        res.failures.append("s.npz differs from the reference sample")
    if pixels is not None and not np.array_equal(pixels, ref["pixels"]):
        res.failures.append("s.png differs from the reference sample")
    if outcome != "killed" and (arrays is None or pixels is None):
        res.failures.append("exited without writing s.npz and s.png")
    return res
