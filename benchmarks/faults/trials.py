"""Training trials: start the run, SIGKILL it per the trial's spec (perhaps again during the resume),
continue until it ends, check it against the reference."""

import random
import time
from dataclasses import dataclass, field

from benchmarks.faults.checks import check_run
from benchmarks.faults.kills import KillSpec, classify, drive, resolve_kill
from benchmarks.faults.process import Proc
from benchmarks.faults.reference import Context
from benchmarks.faults.run_files import checkpoints, ckpt_temps, find_run_dir, missing_outputs
from benchmarks.faults.settings import FIRST_MODES, SECOND_MODES


@dataclass
class TrialSpec:
    index: int
    first: KillSpec
    second: KillSpec | None = None


@dataclass
class TrialResult:
    spec: TrialSpec
    phase: str = ""
    kill_s: float = 0.0
    second_phase: str = ""
    resumes: int = 0
    fresh: int = 0
    start_step: int = 0  # the checkpoint step the (first) continuation started from
    failures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


def draw_trials(n: int, seed: int, second_p: float = 0.3) -> list[TrialSpec]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        first = KillSpec(FIRST_MODES[i % len(FIRST_MODES)], rng.random(), rng.random())
        second = None
        if rng.random() < second_p:
            second = KillSpec(rng.choice(SECOND_MODES), rng.random(), rng.random())
        out.append(TrialSpec(i, first, second))
    return out


def run_trial(ctx: Context, spec: TrialSpec) -> TrialResult:
    """Start, kill per `spec`, continue (resume, or restart fresh when no checkpoint exists) until the
    run ends, then check the finished run against the reference."""
    ref = ctx.ref
    assert ref is not None, "reference_run(ctx) first"
    t0 = time.monotonic()
    res = TrialResult(spec)
    tdir = ctx.workdir / f"trial-{spec.index:03d}"
    tdir.mkdir(parents=True, exist_ok=True)
    out = tdir / "out0"
    with Proc(ctx.train_args(out), tdir / "proc0.txt", ctx.env, ctx.timeout) as proc:
        outcome, res.kill_s = drive(proc, out, None, resolve_kill(spec.first, ref, 0))
        proc.wait()
    if outcome == "timeout":
        res.failures["final"] = "first process timed out"
    run_dir = find_run_dir(out)
    res.phase = classify(outcome, run_dir, ref.total, ckpt_temps(run_dir))

    rc, text = None, ""
    for k, kill in enumerate([spec.second, None] if spec.second else [None], start=1):
        ck = checkpoints(run_dir)
        if ck:
            start = max(ck)
            args = ["train", "--resume", str(run_dir)]
            res.resumes += 1
        else:
            start = 0
            out = tdir / f"out{k}"
            args = ctx.train_args(out)
            res.fresh += 1
        if k == 1:
            res.start_step = start
        before = set(ckpt_temps(run_dir)) if ck else set()
        with Proc(args, tdir / f"proc{k}.txt", ctx.env, ctx.timeout) as proc:
            trig = resolve_kill(kill, ref, start) if kill is not None else None
            outcome, _ = drive(proc, out, run_dir if ck else None, trig)
            rc = proc.wait()
            text = proc.output()
        if not ck:
            run_dir = find_run_dir(out)
        temps = [n for n in ckpt_temps(run_dir) if n not in before]
        if kill is not None:
            res.second_phase = classify(outcome, run_dir, ref.total, temps)
        if outcome == "timeout" or rc is None:
            res.failures["final"] = f"process {k} timed out after {ctx.timeout:.0f} s"
            break
    if "final" not in res.failures and rc != 0:
        tail = " | ".join(text.strip().splitlines()[-2:])
        res.failures["final"] = f"last process exited {rc}: {tail[-200:]}"
    res.failures.update(check_run(run_dir, ref))
    if run_dir is not None and (miss := missing_outputs(run_dir)):
        res.failures["outputs"] = "missing " + ", ".join(miss)
    res.seconds = time.monotonic() - t0
    return res
