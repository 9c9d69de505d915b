"""When to kill a process (a `KillSpec` resolved to a `Trigger`), killing it (`drive`), and which phase
of the run the kill hit (`classify`)."""

import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.faults.process import Proc
from benchmarks.faults.reference import Reference
from benchmarks.faults.run_files import (
    checkpoints,
    ckpt_temps,
    file_stamp,
    find_run_dir,
    is_eval,
    missing_outputs,
    read_log,
)
from benchmarks.faults.settings import CKPT_EVERY, LOG_EVERY, POLL_S


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
    fire_at = armed = low = logfile_stamp = None
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
                    elif (stamp := file_stamp(run_dir / "log.jsonl")) != logfile_stamp:
                        # spin from the log record one LOG_EVERY before the checkpoint's step (a few
                        # ms ahead of the write); on a resume the count of such records may first drop
                        logfile_stamp = stamp
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
