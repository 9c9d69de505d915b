"""benchmarks/fault_injection.py on a few chosen trials: SIGKILL `meanflow train` during a checkpoint
write, inside a step (and again during the resume), before the first checkpoint; SIGKILL `meanflow
sample` while it writes. Every resumed run must end bitwise equal to the uninterrupted one, with a log
that holds each step once and no temp file left (see the script's docstring for the checks).

The full randomised suite: `python benchmarks/fault_injection.py --trials 24`.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
from benchmark_scripts import load_benchmark

pytestmark = pytest.mark.slow

STEPS = 30  # checkpoints at 10, 20 and 30


@pytest.fixture(scope="module")
def fi():
    return load_benchmark("fault_injection")


@pytest.fixture(scope="module")
def outcome(fi, tmp_path_factory):
    """The reference run, then the trials two at a time (each subprocess uses one thread; the kill
    triggers wait for files, not for clock times, so the parallel load does not move them)."""
    ctx = fi.Context.create(tmp_path_factory.mktemp("fault_injection"), steps=STEPS, timeout=120)
    ref = fi.reference_run(ctx)
    assert ref.total == STEPS and any(k.startswith("ema/") for k in ref.tensors)

    def sampling():
        fi.sample_reference(ctx)
        return fi.run_sample_trial(ctx, 0, "temp", 0.0)

    jobs = {
        # inside step 15 (log records 12 and 14 are past checkpoint 10), then again while the resumed
        # process writes checkpoint 20; the third process resumes from checkpoint 10 again
        "mid-step": lambda: fi.run_trial(ctx, fi.TrialSpec(
            1, fi.KillSpec("mid-step", v=0.3, step=10), fi.KillSpec("ckpt-write", step=20))),
        # as soon as a temp file of checkpoint 20 appears: resume from step 10
        "ckpt-write": lambda: fi.run_trial(ctx, fi.TrialSpec(0, fi.KillSpec("ckpt-write", step=20))),
        # 0.3 s after launch, still importing: no checkpoint, restart from scratch in a new folder
        "early": lambda: fi.run_trial(ctx, fi.TrialSpec(2, fi.KillSpec("early", u=0.0))),
        # right after the last checkpoint, before samples.png / metrics.json / loss.png: the resume
        # writes the final outputs only
        "final": lambda: fi.run_trial(ctx, fi.TrialSpec(3, fi.KillSpec("final", u=0.0))),
        "sampling": sampling,
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def _explain(r) -> str:
    return f"phase {r.phase!r}, 2nd {r.second_phase!r}, started from {r.start_step}: {r.failures}"


def test_kill_during_a_checkpoint_write_then_resume(outcome):
    r = outcome["ckpt-write"]
    # a checkpoint write lasts ~2 ms: on a busy machine the kill may land just after it ("training",
    # resumed from checkpoint 20 then), or a starved poller may miss checkpoint 20's write altogether and
    # catch checkpoint 30's (seen once with 5 processes on 2 cores: "ckpt write", resumed from 20)
    assert r.phase in ("ckpt write", "training"), _explain(r)
    starts = (10, 20) if r.phase == "ckpt write" else (20,)
    assert r.resumes == 1 and r.fresh == 0 and r.start_step in starts, _explain(r)
    assert r.ok, _explain(r)


def test_kill_inside_a_step_and_again_during_the_resume(outcome):
    r = outcome["mid-step"]
    assert r.phase == "training" and r.start_step == 10, _explain(r)
    # as above; a poller starved past every later checkpoint write kills the final phase instead (seen
    # once under heavy load): the resume must still end bit-identical
    assert r.second_phase in ("ckpt write", "training", "final phase") and r.resumes == 2, _explain(r)
    assert r.ok, _explain(r)


def test_kill_before_the_first_checkpoint_restarts_fresh(outcome):
    r = outcome["early"]
    assert r.phase == "before 1st ckpt" and r.fresh == 1 and r.resumes == 0, _explain(r)
    assert r.ok, _explain(r)


def test_kill_after_the_last_checkpoint_then_resume_writes_the_outputs(outcome):
    r = outcome["final"]
    assert r.phase == "final phase" and r.resumes == 1 and r.start_step == STEPS, _explain(r)
    assert r.ok, _explain(r)


def test_kill_sampling_while_it_writes(outcome):
    r = outcome["sampling"]
    assert r.ok, r.failures
    assert r.state != "exited", r.state  # killed while a temp output existed
