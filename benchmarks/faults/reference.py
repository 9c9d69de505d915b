"""The uninterrupted reference run and its timing profile, from which kill moments are drawn."""

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.faults.process import Proc, make_env, snapshot_code
from benchmarks.faults.run_files import checkpoints, find_run_dir, is_eval, load_checkpoint, read_log
from benchmarks.faults.settings import CKPT_EVERY, POLL_S, TIMEOUT_S, train_settings


@dataclass
class Reference:
    run_dir: Path
    total: int
    tensors: dict[str, torch.Tensor]
    state: dict
    log: list[dict]
    t_rundir: float
    """Seconds from launch until the run folder exists (start-up)."""
    t_first_ckpt: float
    t_last_ckpt: float
    t_eval: float
    """... until the evaluation record is logged (the last output before exit)."""
    t_exit: float

    @property
    def step_s(self) -> float:
        return max(1e-3, (self.t_last_ckpt - self.t_first_ckpt) / max(1, self.total - CKPT_EVERY))

    @property
    def final_s(self) -> float:
        """Duration of the phase after the last checkpoint (samples, plots, evaluation, exit)."""
        return max(0.05, self.t_exit - self.t_last_ckpt)

    @property
    def outputs_s(self) -> float:
        """Duration of the final phase until its last output (the evaluation record)."""
        return max(0.05, self.t_eval - self.t_last_ckpt)

    def expected_s(self, start: int) -> float:
        """Expected duration of a process that trains from step `start` to the end."""
        return self.t_rundir + (self.total - start) * self.step_s + self.final_s


@dataclass
class Context:
    workdir: Path
    steps: int
    env: dict[str, str]
    timeout: float = TIMEOUT_S
    ref: Reference | None = None
    sample_ref: dict | None = None

    @classmethod
    def create(cls, workdir: str | Path, steps: int = 80, snapshot: bool = True,
               timeout: float = TIMEOUT_S) -> "Context":
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        code = snapshot_code(workdir / "code") if snapshot else None
        return cls(workdir, steps, make_env(code), timeout)

    def train_args(self, out_dir: Path) -> list[str]:
        sets = [a for s in train_settings(self.steps) for a in ("--set", s)]
        return ["train", "--preset", "toy-2d", *sets, "--out-dir", str(out_dir)]


def reference_run(ctx: Context) -> Reference:
    """The uninterrupted run, with the moments its files appear (for drawing kill times)."""
    out = ctx.workdir / "reference"
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, float] = {}
    with Proc(ctx.train_args(out), out / "output.txt", ctx.env, ctx.timeout) as proc:
        run_dir = None
        while proc.alive() and proc.elapsed() < ctx.timeout:
            t = proc.elapsed()
            run_dir = run_dir or find_run_dir(out)
            if run_dir is not None:
                seen.setdefault("rundir", t)
                steps = checkpoints(run_dir)
                if steps:
                    seen.setdefault("first", t)
                if ctx.steps in steps:
                    seen.setdefault("last", t)
                    if "eval" not in seen and any(is_eval(r) for r in read_log(run_dir)[0]):
                        seen["eval"] = t
            time.sleep(POLL_S)
        rc = proc.wait()
        t_exit = proc.elapsed()
        if rc != 0:
            raise RuntimeError(f"reference run failed (exit {rc}):\n{proc.output()[-3000:]}")
    run_dir = find_run_dir(out)
    ckpts = checkpoints(run_dir)
    if max(ckpts, default=-1) != ctx.steps:
        raise RuntimeError(f"reference run has no checkpoint at step {ctx.steps}: {sorted(ckpts)}")
    tensors, state = load_checkpoint(ckpts[ctx.steps])
    log, bad = read_log(run_dir)
    if bad:
        raise RuntimeError(f"reference log.jsonl has {bad} unreadable lines")
    ctx.ref = Reference(run_dir, ctx.steps, tensors, state, log, seen.get("rundir", 0.5 * t_exit),
                        seen.get("first", 0.6 * t_exit), seen.get("last", 0.7 * t_exit),
                        seen.get("eval", 0.95 * t_exit), t_exit)
    return ctx.ref
