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
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # run as a script (`python benchmarks/fault_injection.py`): the repository root
    sys.path.insert(0, ROOT)

from benchmarks.faults.checks import check_run  # noqa: E402
from benchmarks.faults.kills import KillSpec, Trigger, classify, drive, resolve_kill  # noqa: E402
from benchmarks.faults.process import Proc, make_env, snapshot_code  # noqa: E402
from benchmarks.faults.reference import Context, Reference, reference_run  # noqa: E402
from benchmarks.faults.report import phase_table, sample_lines, trial_lines  # noqa: E402
from benchmarks.faults.sampling import SampleResult, run_sample_trial, sample_reference  # noqa: E402
from benchmarks.faults.settings import CKPT_EVERY, SAMPLE_MODES, TIMEOUT_S  # noqa: E402
from benchmarks.faults.trials import TrialResult, TrialSpec, draw_trials, run_trial  # noqa: E402

# The names the tests (tests/training/test_fault_injection.py) and users reach through this script.
__all__ = ["Context", "KillSpec", "Proc", "Reference", "SampleResult", "TrialResult", "TrialSpec",
           "Trigger", "check_run", "classify", "draw_trials", "drive", "make_env", "main", "reference_run",
           "resolve_kill", "run_sample_trial", "run_trial", "sample_reference", "snapshot_code"]


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
