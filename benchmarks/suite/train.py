"""One job in a worker process: train (resume, or reuse) its run up to each step it is measured at,
measure it there, append the records; write reflow pairs when other jobs train on them.

A job's run lives under its ``run_dir`` as the numbered run folder ``meanflow train`` makes; an
interrupted job resumes from its newest checkpoint, bit-identical to an uninterrupted run (the
training loop's resume contract). Every measured step keeps its checkpoint, so a measurement can be
redone without retraining. Training wall time is kept per segment in ``suite_train.json``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.suite import records
from benchmarks.suite.jobs import Job
from benchmarks.suite.spec import BY_NAME, Suite

PAIRS = {"toy": 50_000, "mnist": 60_000}  # (noise, sample) pairs written per source run (RK45, 1e-5)


def log(msg: str) -> None:
    print(f"[suite {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def latest_run(parent: Path) -> Path | None:
    """Newest numbered run folder under `parent` that has a checkpoint."""
    from meanflow.training.checkpoint import list_checkpoints

    if not parent.is_dir():
        return None
    runs = sorted(p for p in parent.iterdir() if p.is_dir() and re.match(r"^\d{5,}-", p.name))
    runs = [p for p in runs if list_checkpoints(p)]
    return runs[-1] if runs else None


def trained_steps(parent: str | Path) -> int:
    """Optimizer steps of the newest checkpoint under `parent` (0 without one)."""
    from meanflow.training.checkpoint import Checkpoint

    run = latest_run(Path(parent))
    return 0 if run is None else Checkpoint(run).step


def segments(run: Path) -> list[dict]:
    """The training segments of `run` on record (``suite_train.json``): from, to, wall_s, device."""
    path = run / "suite_train.json"
    return json.loads(path.read_text())["segments"] if path.is_file() else []


def _unlogged(run: Path, start: int, device: str) -> list[dict]:
    """The segment a killed worker trained but never put on record (from its last logged segment's end to
    the checkpoint at `start` it left, e.g. at a session's end), its wall time summed from the run's
    ``log.jsonl`` (``sec_per_step`` x steps per log line) and marked ``"estimated"``; [] when none.
    `device`: the checkpoint's ``training.device``."""
    done = max((s["to"] for s in segments(run)), default=0)
    if start <= done or not (run / "log.jsonl").is_file():
        return []
    steps: dict[int, float] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "sec_per_step" in rec and done < rec.get("step", -1) <= start:
            steps.setdefault(int(rec["step"]), float(rec["sec_per_step"]))
    wall, prev = 0.0, done
    for step in sorted(steps):
        wall, prev = wall + steps[step] * (step - prev), step
    return [{"from": done, "to": start, "wall_s": round(wall, 2), "device": records.device_name(device),
             "estimated": True}]


def wall_to(run: Path, step: int) -> tuple[float, str]:
    """Training wall seconds to reach `step` (segments ending at or before it) and the device(s)."""
    segs = [s for s in segments(run) if s["to"] <= step]
    devices = sorted({s["device"] for s in segs}) or ["unknown"]
    return round(sum(s["wall_s"] for s in segs), 2), ", ".join(devices)


def _upstream_overrides(job: Job, dirs: dict[str, str]) -> list[str]:
    out = []
    for role, jid in job.upstream:
        run = latest_run(Path(dirs[jid]))
        if role == "teacher":
            out.append(f"training.teacher={run}")
        elif role == "init_from":
            out.append(f"training.init_from={run}")
        elif role == "pairs_from":
            out += ["data.name=pairs", f"data.data_dir={Path(dirs[jid]) / 'pairs'}"]
    return out


def train_to(suite: Suite, job: Job, point: int, dirs: dict[str, str], threads: int) -> Path:
    """The run of `job` trained to at least `point` steps (trained further from its newest checkpoint
    when it is behind)."""
    from meanflow.training.checkpoint import Checkpoint
    from meanflow.training.loop import train
    from meanflow.training.presets import resolve_config

    parent = Path(job.run_dir)
    run = latest_run(parent)
    ck = None if run is None else Checkpoint(run)
    if ck is not None and ck.step >= point:
        return run
    cfg = resolve_config(suite.preset, overrides=[
        *job.overrides, *_upstream_overrides(job, dirs), f"logging.out_dir={parent}",
        "logging.progress=false", f"training.num_threads={threads}", "logging.tensorboard=false"])
    start = 0 if ck is None else ck.step
    log(f"{job.id}: training {start} -> {point} of {job.steps}")
    gap = [] if ck is None else _unlogged(run, start, ck.config["training"]["device"])
    t0 = time.perf_counter()
    run = train(cfg, resume=run, stop_at=point if point < job.steps else None, echo=lambda _: None)
    segs = [*segments(run), *gap, {"from": start, "to": Checkpoint(run).step,
                                   "wall_s": time.perf_counter() - t0,
                                   "device": records.device_name(cfg.training.device)}]
    tmp = run / f".suite_train.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps({"segments": segs}, indent=1) + "\n")
    os.replace(tmp, run / "suite_train.json")
    return run


def write_pairs(suite: Suite, job: Job, run: Path, threads: int, device: str) -> None:
    """The (noise, sample) pairs of the finished run in ``run_dir/pairs`` (`meanflow reflow-pairs`,
    which resumes a partial folder)."""
    folder = Path(job.run_dir) / "pairs"
    if (folder / "manifest.json").is_file() and (folder / ".complete").is_file():
        return
    cmd = [sys.executable, "-m", "meanflow.cli", "reflow-pairs", str(run), "-n", str(PAIRS[suite.part]),
           "--out", str(folder), "--seed", str(job.seed), "--solver", "rk45",
           "--batch-size", "4096" if suite.part == "toy" else "500", "--device", device]
    log(f"{job.id}: pairs -> {folder}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"reflow-pairs failed: {(res.stderr or res.stdout).strip()[-2000:]}")
    (folder / ".complete").write_text("")


def run_job(suite: Suite, job: Job, todo: list[int], dirs: dict[str, str], results: str, threads: int,
            device: str, train_only: bool, eval_threads: int | None = None, eval_device: str = "cpu",
            measure_only: bool = False) -> str:
    """Train `job` to its last step (or to the last of `todo`), measure it at each step of `todo` on
    `eval_device`, append the records to `results`; returns the job's id. Runs in a worker process.
    `measure_only`: train nothing, measure the steps of `todo` whose checkpoints exist (the runner
    passes only those)."""
    from meanflow.training.checkpoint import checkpoint_path

    torch.set_num_threads(threads)
    entry = BY_NAME[job.entry]
    final = job.steps if (job.makes_pairs or not job.points) else max(todo, default=job.steps)
    for point in sorted({*todo} if measure_only else {*todo, final}):
        if job.trains and not measure_only:
            run = train_to(suite, job, point, dirs, threads)
        else:
            run = latest_run(Path(job.run_dir))
        if point not in todo or train_only:
            continue
        ckpt = checkpoint_path(run, point)
        if not ckpt.is_file():
            raise RuntimeError(f"{job.id}: no checkpoint at step {point} in {run} (trained past it before "
                               "this measurement was asked for); delete the run folder to retrain")
        t0 = time.perf_counter()
        if eval_threads:
            torch.set_num_threads(eval_threads)
        if suite.part == "toy":
            from benchmarks.suite import toy_eval

            partial = toy_eval.measure(ckpt, job.dataset, entry.nfe("toy"), job.seed, suite.samples,
                                       entry.sample_kwargs)
        else:
            from benchmarks.suite import mnist_eval

            partial = mnist_eval.measure(ckpt, entry, job.seed, suite.samples, job.run_dir,
                                         variant=job.variant, device=eval_device)
        torch.set_num_threads(threads)
        wall, train_device = wall_to(run, point)
        base = {"setup": suite.setup, "dataset": job.dataset, "method": job.entry,
                "variant": job.variant or None, "run_steps": suite.budget,
                "train_steps": point + job.chain_offset, "seed": job.seed,
                "commit": records.git_commit(), "device": records.device_name(eval_device),
                "train_device": train_device, "wall_s": wall, "eval_s": round(time.perf_counter() - t0, 2),
                "date": time.strftime("%Y-%m-%d"), "suite": suite.name}
        records.append(Path(results), [{**base, **p} for p in partial])
        log(f"{job.id} @ {point}: " + ", ".join(f"{p['nfe']}-step {p['metric']} {p['value']:.4f}"
                                                for p in partial if p["metric"] in ("sliced_w2", "fid")))
    if job.makes_pairs and not measure_only:
        write_pairs(suite, job, latest_run(Path(job.run_dir)), threads, device)
    return job.id
