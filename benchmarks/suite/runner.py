"""The scheduler: which jobs of a suite still owe records, in which order, on how many workers.

A job is *due* when a record it owes is missing from the results files (every ``*.jsonl`` beside the
suite's own file: records are keyed by content, so a run that another suite measured counts); a job
is *needed* when it is due or when a due job trains on its run (teacher, first stage, pairs) and that
run is not already finished on disk. Needed jobs run in worker processes (`jobs` at a time, `threads`
each), each as soon as its upstream jobs are done. Records are appended as each measurement finishes,
so an interrupted suite loses at most the measurements in flight; running the same command again
redoes only what is missing (training resumes from the newest checkpoint of each run).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import multiprocessing
import os
import threading
import time
from pathlib import Path

from benchmarks.suite import records
from benchmarks.suite.jobs import Job, expand, owed_keys
from benchmarks.suite.spec import Suite
from benchmarks.suite.train import latest_run, log, run_job, segments, trained_steps


def plan(suite: Suite, jobs: list[Job], have: set[tuple], train_only: bool) -> dict[str, list[int]]:
    """``job id -> steps still to measure`` for every needed job (an empty list: train only)."""
    by_id = {j.id: j for j in jobs}
    todo: dict[str, list[int]] = {}
    for j in jobs:
        owed = owed_keys(suite, j)
        missing = [p for p, keys in owed.items() if any(k not in have for k in keys)]
        if missing:
            todo[j.id] = [] if train_only else missing
            if train_only and trained_steps(j.run_dir) >= j.steps:
                del todo[j.id]
    frontier = list(todo)
    while frontier:  # upstream runs of needed jobs, unless already trained (and their pairs written)
        j = by_id[frontier.pop()]
        for role, uid in j.upstream:
            u = by_id[uid]
            done = trained_steps(u.run_dir) >= u.steps and (
                not u.makes_pairs or (Path(u.run_dir) / "pairs" / ".complete").is_file())
            if uid not in todo and (not done or role == "trained_as"):
                todo[uid] = []
                frontier.append(uid)
    return todo


def noise_floor(suite: Suite, datasets, seeds, have: set[tuple], results: Path) -> None:
    """The ``data`` rows of a 2-D suite (a fresh draw of the distribution per seed), where missing."""
    from benchmarks.suite import toy_eval

    for ds in datasets:
        for s in seeds:
            key = (suite.setup, ds, "data", None, 0, 0, s, None, "sliced_w2")
            if key in have:
                continue
            base = {"setup": suite.setup, "dataset": ds, "method": "data", "variant": None, "run_steps": 0,
                    "train_steps": 0, "seed": s, "commit": records.git_commit(),
                    "device": records.device_name("cpu"), "train_device": None, "wall_s": 0.0,
                    "date": time.strftime("%Y-%m-%d"), "suite": suite.name}
            records.append(results, [{**base, **p} for p in toy_eval.noise_floor(ds, suite.samples, s)])


@contextlib.contextmanager
def exclusive(out: Path, name: str = ".lock"):
    """Hold ``out/<name>`` for the runner's lifetime: a second runner on the same run folders (two of them
    would train the same run twice) stops with a one-line error instead."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / name, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another runner is using {out}; wait for it or pass another --out") from None
        yield


def measurable(jobs: list[Job], todo: dict[str, list[int]]) -> dict[str, list[int]]:
    """`todo` cut to the steps whose checkpoints exist and whose training segment is on record (what a
    measure-only pass can measure: a checkpoint just written by a runner training beside it counts once
    that runner has logged the segment's wall time)."""
    from meanflow.training.checkpoint import checkpoint_path

    by_id = {j.id: j for j in jobs}
    out = {}
    for jid, points in todo.items():
        run = latest_run(Path(by_id[jid].run_dir))
        logged = max((s["to"] for s in segments(run)), default=-1) if run is not None else -1
        ready = [p for p in points if p <= logged and checkpoint_path(run, p).is_file()]
        if ready:
            out[jid] = ready
    return out


def run_suite(suite: Suite, *, out: Path, results: Path, datasets=None, methods=None, variants=None,
              seeds=None, jobs: int = 2, threads: int = 1, device: str = "cpu", train_only: bool = False,
              dry_run: bool = False, eval_threads: int | None = None, eval_device: str = "cpu",
              measure_only: bool = False) -> dict:
    """Run what is missing of `suite` (or of the given slice); returns a summary.

    `measure_only`: train nothing; measure the owed steps whose checkpoints already exist. Such a pass
    holds ``out/.measure.lock`` instead of ``out/.lock``, so it can run beside a ``train_only`` runner
    on the same folders (that one measures nothing, this one trains nothing: no record is written twice).
    """
    if train_only and measure_only:
        raise ValueError("--train-only and --measure-only exclude each other")
    t0 = time.perf_counter()
    all_jobs = expand(suite, out, datasets=datasets, methods=methods, variants=variants, seeds=seeds,
                      device=device)
    # Every records file beside `results` counts: a run measured by another suite is not measured again.
    have = {records.key_of(r) for r in records.load([results.parent, results])}
    todo = plan(suite, all_jobs, have, train_only)
    if measure_only:
        todo = measurable(all_jobs, {k: v for k, v in todo.items() if v})
    order = [j for j in all_jobs if j.id in todo]
    log(f"suite {suite.name}: {len(all_jobs)} jobs, {len(order)} to run "
        f"({sum(len(v) for v in todo.values())} measurements), {jobs} worker(s) x {threads} thread(s)")
    if dry_run:
        for j in order:
            log(f"  {j.id}: measure at {todo[j.id] or '-'}")
        return {"jobs": len(all_jobs), "run": len(order), "wall_s": 0.0}
    with exclusive(out, ".measure.lock" if measure_only else ".lock"):
        return _run(suite, all_jobs, order, todo, out, results, datasets, seeds, jobs, threads, device,
                    train_only, eval_threads, t0, have, eval_device, measure_only)


def exit_with_parent(parent: int, every: float = 2.0) -> None:
    """Worker initializer: a daemon thread ends this worker once its runner (pid `parent`) is gone.

    Killing the runner (Ctrl-C, `kill`, a session's end) must not leave its workers training and
    appending records: the runner's lock on the run folders dies with it, and a new runner would start
    the same jobs beside them. A worker cut off this way resumes from its newest checkpoint next time.
    """
    def watch() -> None:
        while True:
            time.sleep(every)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run(suite, all_jobs, order, todo, out, results, datasets, seeds, jobs, threads, device, train_only,
         eval_threads, t0, have, eval_device="cpu", measure_only=False) -> dict:
    if suite.part == "toy" and not train_only:
        seeds = seeds if seeds is not None else suite.seeds
        noise_floor(suite, datasets or suite.datasets, seeds, have, results)
    dirs = {j.id: j.run_dir for j in all_jobs}
    done: set[str] = set()
    failed: dict[str, str] = {}
    ctx = multiprocessing.get_context("spawn")
    watch = {"initializer": exit_with_parent, "initargs": (os.getpid(),)}  # no orphans if the runner dies
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, **watch) as pool:
        running: dict[concurrent.futures.Future, str] = {}
        pending = list(order)
        while pending or running:
            ready = [j for j in pending if all(u in done or u not in todo for _, u in j.upstream)
                     and not any(u in failed for _, u in j.upstream)]
            blocked = [j for j in pending if any(u in failed for _, u in j.upstream)]
            for j in blocked:
                failed[j.id] = "upstream failed"
                pending.remove(j)
            for j in ready[: max(0, jobs - len(running))]:
                pending.remove(j)
                fut = pool.submit(run_job, suite, j, todo[j.id], dirs, str(results), threads, device,
                                  train_only, eval_threads, eval_device, measure_only)
                running[fut] = j.id
            if not running:
                break
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in finished:
                jid = running.pop(fut)
                try:
                    fut.result()
                    done.add(jid)
                except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
                    failed[jid] = f"{type(e).__name__}: {e}"
                    log(f"{jid} FAILED: {failed[jid]}")
    wall = time.perf_counter() - t0
    log(f"suite {suite.name}: {len(done)} job(s) done, {len(failed)} failed, {wall / 60:.1f} min")
    return {"jobs": len(all_jobs), "run": len(order), "done": len(done), "failed": failed, "wall_s": wall}
