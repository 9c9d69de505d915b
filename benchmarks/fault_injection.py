"""Fault injection: kill -9 `meanflow train` (and `meanflow sample`) at random moments, resume, compare.

One uninterrupted reference run of a small 2-D config is trained first. Each trial then starts the
same training in a subprocess, sends it SIGKILL at a moment drawn from a seeded RNG (some trials a
second time during the resume), and continues with ``meanflow train --resume RUN`` until it ends
(a run killed before its first checkpoint cannot be resumed: it is restarted from scratch in a new
output folder and counted apart). Kill moments are spread over the phases of a run: start-up,
training steps, checkpoint writes (from the log record just before a checkpoint the trigger spins on
``checkpoints/`` and kills as soon as a temp file appears: safetensors' own ``.tmpXXXXXX``, then the
loop's ``.ckpt-NNNNNNN.tmpPID.safetensors``), the final phase (samples, evaluation, loss plot) and exit.

After every trial the finished run must match the reference:

* ``weights``:  the final checkpoint's tensors (model, every EMA, optimizer) are bitwise equal and its
  ``state`` has the same step and data-sampler state;
* ``log``:      the training records of ``log.jsonl`` have strictly increasing steps, no duplicates,
  the reference's steps, and (but ``sec_per_step``) the reference's values;
* ``tmp-ckpt``: no hidden / temp file is left in ``checkpoints/``;
* ``tmp-run``:  none anywhere else in the run folder;
* ``final``:    the last process ended normally (exit 0) and the newest checkpoint is at the last step;
* ``outputs``:  ``samples.png``, ``loss.png`` and ``metrics.json`` exist and the log holds the end-of-run
  evaluation record exactly once (a run killed after its last checkpoint is resumed too: ``--resume``
  of a checkpoint at the last step writes the final outputs only).

Sampling trials kill ``meanflow sample RUN -n 256 --out D/s`` at random moments; ``D/s.npz`` and
``D/s.png`` must then each be absent or complete (loadable and equal to an uninterrupted sample).
Temp files a SIGKILL leaves behind are counted, not failed (the killed process cannot remove them).

Every subprocess runs with ``OMP_NUM_THREADS=1``, in its own session, under a timeout, and is always
killed and reaped. By default the ``meanflow`` sources are copied into the work folder first, so all
runs use the same code even while the checkout changes. Usage::

    python benchmarks/fault_injection.py --trials 24
    python benchmarks/fault_injection.py --trials 8 --sample-trials 2 --seed 3 --workdir /tmp/fi --keep
"""

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

CKPT_EVERY = 10
LOG_EVERY = 2  # divides CKPT_EVERY: records after a resume average the same steps as the reference's
SAMPLE_N = 256
TIMEOUT_S = 150.0  # per subprocess
POLL_S = 0.002
CKPT_RE = re.compile(r"^ckpt-(\d+)\.safetensors$")
RUN_RE = re.compile(r"^\d{5,}-")
PHASES = ("before 1st ckpt", "training", "ckpt write", "final phase", "after completion")
CHECKS = ("final", "weights", "log", "tmp-ckpt", "tmp-run", "outputs")
# Modes of the first kill, cycled over the trials (their moments are drawn from the RNG).
FIRST_MODES = ("mid-step", "ckpt-write", "uniform", "final", "ckpt-write", "early", "uniform", "exit")
SECOND_MODES = ("mid-step", "ckpt-write", "uniform")
SAMPLE_MODES = ("uniform", "temp", "final-name")


def train_settings(steps: int) -> list[str]:
    """`--set` overrides of the small toy run (~1.5 s of steps, ~4 MB checkpoints, 2 EMAs)."""
    return [f"training.steps={steps}", "training.epochs=null", "training.device=cpu",
            "network.kwargs={hidden: 128, depth: 3}", "training.batch_size=64", "data.num_points=4096",
            "training.ema_decays=[0.9, 0.99]", f"training.checkpoint_every={CKPT_EVERY}",
            "training.keep_last=2", "training.warmup_steps=5", f"logging.log_every={LOG_EVERY}",
            "logging.sample_every=1000", "logging.sample_count=256", "logging.tensorboard=false",
            "logging.progress=false", "training.num_threads=1"]


# ---------------------------------------------------------------------------------------------------
# Subprocesses


class Proc:
    """A subprocess in its own session, output to a file; `close()` always kills and reaps it."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], timeout: float) -> None:
        self.log_path = log
        self._log = open(log, "ab")
        self.t0 = time.monotonic()
        self.deadline = self.t0 + timeout
        try:
            self.p = subprocess.Popen([sys.executable, "-m", "meanflow.cli", *args], stdout=self._log,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except BaseException:
            self._log.close()
            raise

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> bool:
        """SIGKILL its process group if it has not exited; True when the signal went out. (An exited,
        unreaped child keeps its pid, so the group cannot be a recycled one.)"""
        if self.p.poll() is not None:
            return False
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def wait(self) -> int | None:
        """Exit status, or None after killing it at the deadline."""
        try:
            return self.p.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            self.p.wait()
            return None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.kill()
        self.p.wait()
        self._log.close()

    def __enter__(self) -> "Proc":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_env(code_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if code_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code_dir), *filter(None, [env.get("PYTHONPATH")])])
    return env


def snapshot_code(dest: Path) -> Path:
    """Copy the `meanflow` package into `dest` (the folder to put on PYTHONPATH)."""
    spec = importlib.util.find_spec("meanflow")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("meanflow is not importable")
    src = Path(next(iter(spec.submodule_search_locations)))
    shutil.copytree(src, dest / "meanflow", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


# ---------------------------------------------------------------------------------------------------
# Run folders


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


# ---------------------------------------------------------------------------------------------------
# Reference and timing profile


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


# ---------------------------------------------------------------------------------------------------
# Kill specifications and triggers


@dataclass
class KillSpec:
    """When to kill a process. `u`, `v` are uniform draws in [0, 1) resolved against the process's
    start step and the reference timing; `step` pins the checkpoint step of ckpt-write / mid-step.

    Modes: early (delay before the first checkpoint), uniform (delay from start-up to the expected
    end), mid-step (inside a step after 1-4 log records past checkpoint `step`), ckpt-write (as soon as the
    temp file of checkpoint `step` appears), final (a fraction `u` into the phase after the last
    checkpoint), exit (as soon as the evaluation record is logged, late in the final phase).
    """

    mode: str
    u: float = 0.5
    v: float = 0.5
    step: int | None = None

    def __str__(self) -> str:
        return self.mode + (f"@{self.step}" if self.step is not None else "")


@dataclass
class Trigger:
    kind: str  # "delay" | "ckpt" (a checkpoint exists) | "log" (records past it) | "temp" | "eval"
    delay: float = 0.0  # "delay": since launch; others: after the condition holds
    step: int = 0
    count: int = 1  # "log": this many new records past checkpoint `step`


def resolve_kill(spec: KillSpec, ref: Reference, start: int) -> Trigger:
    """The concrete trigger of `spec` for a process that trains from step `start`."""
    total = ref.total
    later = [s for s in range(CKPT_EVERY, total + 1, CKPT_EVERY) if s > start] or [total]
    if total not in later:
        later.append(total)
    pick = spec.step if spec.step is not None else later[min(int(spec.u * len(later)), len(later) - 1)]
    if spec.mode == "early":
        hi = max(0.35, 0.95 * ref.t_first_ckpt)
        return Trigger("delay", 0.3 + spec.u * (hi - 0.3))
    if spec.mode == "uniform":
        lo, hi = ref.t_rundir, 1.05 * ref.expected_s(start)
        return Trigger("delay", lo + spec.u * (hi - lo))
    if spec.mode == "mid-step":
        inner = [s for s in later if s < total]
        if spec.step is None and not inner:  # no checkpoint left before the last: a delay instead
            lo, hi = ref.t_rundir, ref.expected_s(start) - ref.final_s
            return Trigger("delay", lo + spec.v * max(0.0, hi - lo))
        c = spec.step if spec.step is not None else inner[min(int(spec.u * len(inner)), len(inner) - 1)]
        # after the k-th log record past checkpoint c (k = 1 .. records per checkpoint interval - 1),
        # plus a fraction of a step: the run dies between steps c+2k and c+2k+1, with k records to drop
        k = 1 + int(spec.v * (CKPT_EVERY // LOG_EVERY - 1))
        return Trigger("log", spec.v * ref.step_s, c, count=k)
    if spec.mode == "ckpt-write":
        return Trigger("temp", 0.0, pick)
    if spec.mode == "final":
        return Trigger("ckpt", spec.u * ref.outputs_s, total)
    if spec.mode == "exit":
        return Trigger("eval", step=total)
    raise ValueError(f"unknown kill mode {spec.mode!r}")


def drive(proc: Proc, out_dir: Path, run_dir: Path | None, trig: Trigger | None) -> tuple[str, float]:
    """Poll until `trig` fires (then SIGKILL) or the process exits. Returns ("killed" | "exited" |
    "timeout", seconds since launch). Files present at launch (a resumed run's) never fire."""
    old_temps = set(ckpt_temps(run_dir))
    old_ckpts = set(checkpoints(run_dir))
    fire_at = armed = low = log_stamp = None
    hot = False
    while True:
        if not proc.alive():
            return "exited", proc.elapsed()
        now = proc.elapsed()
        if time.monotonic() >= proc.deadline:
            proc.kill()
            return "timeout", now
        if fire_at is None and trig is not None:
            if trig.kind == "delay":
                fire_at = trig.delay
            else:
                run_dir = run_dir or find_run_dir(out_dir)
            if fire_at is None and run_dir is not None:
                ck = checkpoints(run_dir)
                new = trig.step in ck and trig.step not in old_ckpts
                if trig.kind == "ckpt" and new:
                    fire_at = now + trig.delay
                elif trig.kind == "log" and (new or armed is not None):
                    # records past the checkpoint: those left by an earlier process (if the resume
                    # kept them) when it appeared, then one more per LOG_EVERY steps
                    past = sum(1 for r in read_log(run_dir)[0] if (r.get("step") or 0) > trig.step)
                    armed = past if armed is None else armed
                    if past >= armed + trig.count:
                        fire_at = now + trig.delay
                elif trig.kind == "temp":
                    # any new temp once hot: safetensors itself first writes a `.tmpXXXXXX` file, then
                    # renames it to the loop's `.ckpt-NNNNNNN.tmpPID.safetensors`, then into place
                    prefix = f".ckpt-{trig.step:07d}."
                    temps = [n for n in ckpt_temps(run_dir) if n not in old_temps]
                    if new or any(hot or n.startswith(prefix) for n in temps):
                        fire_at = now  # the temp file (or, when missed, the checkpoint just in place)
                    elif (stamp := _stamp(run_dir / "log.jsonl")) != log_stamp:
                        # spin from the log record one LOG_EVERY before the checkpoint's step (a few
                        # ms ahead of the write); on a resume the count of such records may first drop
                        log_stamp = stamp
                        n = sum(r.get("step") == trig.step - LOG_EVERY for r in read_log(run_dir)[0])
                        low = n if low is None else min(low, n)
                        hot = n > low
                elif trig.kind == "eval" and ck and max(ck) >= trig.step:
                    if any(is_eval(r) for r in read_log(run_dir)[0]):
                        fire_at = now
        if fire_at is not None and proc.elapsed() >= fire_at:
            t = proc.elapsed()
            return ("killed" if proc.kill() else "exited"), t
        if hot and fire_at is None:
            continue  # spin: a checkpoint write lasts a few ms
        time.sleep(POLL_S if fire_at is None else min(POLL_S, max(0.0, fire_at - proc.elapsed())))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def classify(outcome: str, run_dir: Path | None, total: int, new_temps: list[str]) -> str:
    """The phase a kill hit, read from what the run folder holds afterwards."""
    if outcome != "killed":
        return "after completion"
    if new_temps:
        return "ckpt write"
    ck = checkpoints(run_dir)
    if not ck:
        return "before 1st ckpt"
    if max(ck) < total:
        return "training"
    return "final phase" if missing_outputs(run_dir) else "after completion"


# ---------------------------------------------------------------------------------------------------
# Training trials


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


def check_run(run_dir: Path | None, ref: Reference) -> dict[str, str]:
    """{check: why it failed} of a finished run against the reference (empty: all passed)."""
    fail: dict[str, str] = {}
    if run_dir is None:
        return {"final": "no run folder"}
    ck = checkpoints(run_dir)
    newest = max(ck, default=None)
    if newest != ref.total:
        fail["final"] = f"newest checkpoint is at step {newest}, not {ref.total}"
    if newest is not None:
        try:
            tensors, state = load_checkpoint(ck[newest])
        except Exception as e:  # a torn file under a final name is a failure, whatever the error
            fail["weights"] = f"checkpoint {ck[newest].name} unreadable: {type(e).__name__}: {e}"
        else:
            why = []
            if set(tensors) != set(ref.tensors):
                why.append(f"tensor names differ ({len(set(tensors) ^ set(ref.tensors))})")
            want = ref.tensors
            diff = [k for k in sorted(set(tensors) & set(want))
                    if tensors[k].dtype != want[k].dtype or not torch.equal(tensors[k], want[k])]
            if diff:
                why.append(f"{len(diff)} tensors differ (e.g. {diff[0]})")
            for key in ("step", "sampler"):
                if state.get(key) != ref.state.get(key):
                    why.append(f"state.{key} differs")
            if why:
                fail["weights"] = "; ".join(why)
    recs, bad = read_log(run_dir)
    steps = [r.get("step") for r in recs if not is_eval(r)]
    ref_recs = [r for r in ref.log if not is_eval(r)]
    why = []
    if bad:
        why.append(f"{bad} unreadable lines")
    dups = len(steps) - len(set(steps))
    if dups or any(b <= a for a, b in zip(steps, steps[1:])):
        why.append(f"steps not strictly increasing ({dups} duplicates)")
    if steps != [r["step"] for r in ref_recs]:
        why.append(f"steps differ from the reference's ({len(steps)} records vs {len(ref_recs)})")
    elif (n := sum(_strip(a) != _strip(b) for a, b in zip(recs_train(recs), ref_recs))):
        why.append(f"{n} records differ in value from the reference's")
    if why:
        fail["log"] = "; ".join(why)
    if t := ckpt_temps(run_dir):
        fail["tmp-ckpt"] = f"{len(t)} left in checkpoints/: {', '.join(t[:3])}"
    if t := run_temps(run_dir):
        fail["tmp-run"] = f"{len(t)} left in the run folder: {', '.join(t[:3])}"
    return fail


def recs_train(recs: list[dict]) -> list[dict]:
    return [r for r in recs if not is_eval(r)]


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "sec_per_step"}


# ---------------------------------------------------------------------------------------------------
# Sampling trials


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


# ---------------------------------------------------------------------------------------------------
# Report


def table(rows: list[list[str]], header: list[str]) -> str:
    cols = [header, *rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(line, rows)])


def phase_table(results: list[TrialResult]) -> str:
    rows = []
    for phase in PHASES + ("total",):
        rs = [r for r in results if phase == "total" or r.phase == phase]
        if not rs and phase != "total":
            continue
        fails = {c: sum(c in r.failures for r in rs) for c in CHECKS}
        rows.append([phase, str(len(rs)), str(sum(r.resumes > 0 and r.fresh == 0 for r in rs)),
                     str(sum(r.fresh > 0 for r in rs)), str(sum(r.spec.second is not None for r in rs)),
                     str(sum(r.ok for r in rs)), str(sum(not r.ok for r in rs)),
                     " ".join(f"{c}x{n}" for c, n in fails.items() if n) or "-"])
    return table(rows, ["phase killed in", "trials", "resumed", "fresh restart", "2nd kill", "pass", "fail",
                        "failed checks"])


def trial_lines(results: list[TrialResult]) -> str:
    rows = []
    for r in results:
        second = f"{r.spec.second} -> {r.second_phase}" if r.spec.second else "-"
        how = f"resume from {r.start_step}" if r.resumes and not r.fresh else f"fresh x{r.fresh}" + (
            f" + resume x{r.resumes}" if r.resumes else "")
        why = "; ".join(f"{c}: {m}" for c, m in r.failures.items()) or "ok"
        rows.append([str(r.spec.index), str(r.spec.first), f"{r.kill_s:.2f}", r.phase, second, how,
                     f"{r.seconds:.1f}", why + (f" [{'; '.join(r.notes)}]" if r.notes else "")])
    return table(rows, ["#", "kill", "at s", "phase", "2nd kill", "continued by", "s", "result"])


def sample_lines(results: list[SampleResult]) -> str:
    rows = [[str(r.index), r.mode, f"{r.kill_s:.2f}", r.state, str(r.temps),
             "; ".join(r.failures) or "ok"] for r in results]
    return table(rows, ["#", "kill", "at s", "left behind", "temps", "result"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=24, help="training trials (default 24)")
    p.add_argument("--sample-trials", type=int, default=6, help="sampling trials (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    p.add_argument("--steps", type=int, default=80, help="training steps of each run (default 80)")
    p.add_argument("--workdir", default=None, help="work folder (default: a temp folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--no-snapshot", action="store_true",
                   help="run the installed meanflow instead of a copy taken at start")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per subprocess")
    args = p.parse_args(argv)
    if args.steps < 2 * CKPT_EVERY or args.steps % CKPT_EVERY:
        p.error(f"--steps must be a multiple of {CKPT_EVERY}, at least {2 * CKPT_EVERY}")
    t0 = time.monotonic()
    if args.workdir:
        workdir = Path(args.workdir)
        if workdir.exists() and any(workdir.iterdir()):
            p.error(f"--workdir {workdir} is not empty")
    else:
        workdir = Path(tempfile.mkdtemp(prefix="meanflow-fault-"))
    try:
        ctx = Context.create(workdir, args.steps, snapshot=not args.no_snapshot, timeout=args.timeout)
        ref = reference_run(ctx)
        print(f"reference: {ref.total} steps in {ref.t_exit:.1f} s (start-up {ref.t_rundir:.1f} s, "
              f"first checkpoint {ref.t_first_ckpt:.1f} s, {1000 * ref.step_s:.0f} ms/step, final phase "
              f"{ref.outputs_s:.1f} s + {ref.t_exit - ref.t_eval:.1f} s exit); {len(ref.tensors)} tensors",
              flush=True)
        results = []
        for spec in draw_trials(args.trials, args.seed):
            r = run_trial(ctx, spec)
            results.append(r)
            print(f"trial {spec.index:3d}: {str(spec.first):11s} {r.phase:16s} "
                  f"{'ok' if r.ok else 'FAIL ' + ', '.join(r.failures)} ({r.seconds:.1f} s)", flush=True)
        samples: list[SampleResult] = []
        if args.sample_trials:
            sample_reference(ctx)
            rng = random.Random(args.seed + 1)
            for i in range(args.sample_trials):
                samples.append(run_sample_trial(ctx, i, SAMPLE_MODES[i % len(SAMPLE_MODES)], rng.random()))
        print("\n## training: SIGKILL, resume, compare with the uninterrupted run\n")
        print(phase_table(results))
        print()
        print(trial_lines(results))
        if samples:
            print("\n## sampling: SIGKILL `meanflow sample`; final names absent or complete\n")
            print(sample_lines(samples))
            print(f"\nsampling: {sum(s.ok for s in samples)}/{len(samples)} pass; "
                  f"{sum(s.temps for s in samples)} temp file(s) left by killed processes (not failed)")
        failed = sum(not r.ok for r in results) + sum(not s.ok for s in samples)
        print(f"\ntraining: {sum(r.ok for r in results)}/{len(results)} pass; total time "
              f"{time.monotonic() - t0:.0f} s; {'FAILED' if failed else 'all passed'}")
        if args.keep or args.workdir:
            print(f"work folder: {workdir}")
        return 1 if failed else 0
    finally:
        if not (args.keep or args.workdir):
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
