"""The runner end to end on the smoke suite (2 methods x 2 seeds x 50 steps, one 2-D set): valid records,
a second invocation redoes nothing, a half-finished suite resumes without redoing finished records."""

import json
import os
from pathlib import Path

import pytest

from benchmarks.suite import records
from benchmarks.suite.__main__ import main
from benchmarks.suite.jobs import METRICS, expand, owed_keys
from benchmarks.suite.runner import run_suite
from benchmarks.suite.suites import SUITES
from benchmarks.suite.train import latest_run, train_to

SMOKE = SUITES["smoke"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_smoke_suite_end_to_end_and_resume(tmp_path, one_thread, monkeypatch):
    out, res = tmp_path / "runs", tmp_path / "smoke.jsonl"
    jobs = {j.id: j for j in expand(SMOKE, out)}
    assert len(jobs) == 4
    # A half-finished suite: one run stopped at step 25 of 50, before the runner starts.
    first = jobs["checkerboard/meanflow/seed0"]
    train_to(SMOKE, first, 25, {j.id: j.run_dir for j in jobs.values()}, threads=1)
    summary = run_suite(SMOKE, out=out, results=res, jobs=2)
    assert summary["failed"] == {} and summary["done"] == 4
    recs = _lines(res)
    owed = {k for j in jobs.values() for keys in owed_keys(SMOKE, j).values() for k in keys}
    floor = {(r["dataset"], r["seed"], r["metric"]) for r in recs if r["method"] == "data"}
    assert {records.key_of(r) for r in recs if r["method"] != "data"} == owed
    assert floor == {("checkerboard", s, m) for s in (0, 1) for m in METRICS["toy"]}
    for r in recs:
        assert set(records.REQUIRED) <= set(r), r
        assert r["value"] == r["value"] and r["value"] >= (0 if r["metric"] != "energy" else -0.05)
        if r["method"] != "data":
            assert r["train_steps"] == 50 and r["run_steps"] == 50 and r["wall_s"] > 0
    segs = json.loads((latest_run(Path(first.run_dir)) / "suite_train.json").read_text())["segments"]
    assert [(s["from"], s["to"]) for s in segs] == [(0, 25), (25, 50)]  # resumed, not restarted
    runs_before = sorted(Path(out).rglob("checkpoints/*.safetensors"))

    # Nothing missing: nothing runs, nothing is appended.
    summary = run_suite(SMOKE, out=out, results=res, jobs=2)
    assert summary["run"] == 0 and len(_lines(res)) == len(recs)
    # Records are keyed by content: another suite's file beside them finds nothing due either.
    summary = run_suite(SMOKE, out=out, results=tmp_path / "other.jsonl", jobs=2)
    assert summary["run"] == 0 and not (tmp_path / "other.jsonl").exists()

    # Records of one job lost: only that job is measured again, from its finished run (no training).
    keep = [r for r in recs if not (r["method"] == "flow_matching" and r["seed"] == 1)]
    res.write_text("".join(json.dumps(r) + "\n" for r in keep))
    summary = run_suite(SMOKE, out=out, results=res, jobs=1)
    assert summary["run"] == 1
    again = records.load([res])
    assert {records.key_of(r) for r in again if r["method"] != "data"} == owed
    redone = {
        records.key_of(r): r["value"] for r in again if r["method"] == "flow_matching" and r["seed"] == 1
    }
    before = {
        records.key_of(r): r["value"] for r in recs if r["method"] == "flow_matching" and r["seed"] == 1
    }
    assert redone == before  # the same checkpoint measured again gives the same figures
    assert sorted(Path(out).rglob("checkpoints/*.safetensors")) == runs_before

    # The k-step diagnosis of the MeanFlow runs through the command line (a small reference for speed).
    from benchmarks.suite import diagnose

    monkeypatch.setattr(diagnose, "N_REF", 256)
    monkeypatch.setattr(diagnose, "B", 64)
    diag = tmp_path / "diagnosis.jsonl"
    assert main(["diagnose", "smoke", "--out", str(out), "--results", str(diag)]) == 0
    got = records.load([diag])
    coupling = {(r["seed"], r["nfe"]) for r in got if r["metric"] == "coupling_rmse"}
    assert coupling == {(s, k) for s in (0, 1) for k in (1, 2, 4)}
    assert {r["method"] for r in got} == {"meanflow"} and all(r["value"] >= 0 for r in got)
    assert any(r["metric"] == "coverage[0.5,1]" and r["train_steps"] == 0 for r in got)
    n = len(diag.read_text().splitlines())
    assert main(["diagnose", "smoke", "--out", str(out), "--results", str(diag)]) == 0
    assert len(diag.read_text().splitlines()) == n  # nothing redone


def test_checkpoints_every_200_steps_on_mnist_and_at_the_end_on_2d(tmp_path):
    """A suite's base may ask for periodic checkpoints (MNIST's runs take an hour on the CPU and must resume
    after a session's end); without one a run checkpoints at its end (and where the runner stops it)."""
    from meanflow.training.presets import resolve_config

    for name, every in (("mnist", 200), ("curves", 20000), ("smoke", 50)):
        suite = SUITES[name]
        job = next(j for j in expand(suite, tmp_path) if j.entry == "meanflow")
        cfg = resolve_config(suite.preset, overrides=list(job.overrides))
        assert cfg.training.checkpoint_every == every, name
        assert cfg.training.precision == "fp32"


def test_a_segment_cut_off_by_a_kill_is_put_on_record_from_the_log(tmp_path):
    """A worker killed after its checkpoint at 400 but before logging its segment (a session's end): the
    resumed run records 200 -> 400 with the wall time of its log lines, marked estimated."""
    from benchmarks.suite.train import _unlogged, wall_to

    (tmp_path / "suite_train.json").write_text(json.dumps(
        {"segments": [{"from": 0, "to": 200, "wall_s": 300.0, "device": "cpu"}]}))
    lines = [{"step": k, "sec_per_step": 1.5 if k <= 200 else 2.0} for k in range(50, 451, 50)]
    lines.insert(5, {"step": 250, "sec_per_step": 9.0, "loss": 1.0})  # a duplicate step from an earlier try
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"torn')
    (gap,) = _unlogged(tmp_path, 400, "cpu")
    assert (gap["from"], gap["to"], gap["estimated"]) == (200, 400, True)
    assert gap["wall_s"] == 4 * 50 * 2.0  # steps 250, 300, 350, 400 at 2 s each (the first 250 line kept)
    assert _unlogged(tmp_path, 200, "cpu") == []
    assert wall_to(tmp_path, 200)[0] == 300.0


def test_chains_count_their_upstream_steps():
    jobs = {j.id: j for j in expand(SUITES["toy"], Path("/tmp/x"), datasets=["moons"], seeds=[0])}
    offsets = {j.entry: j.chain_offset + j.steps for j in jobs.values() if j.trains}
    assert offsets["meanflow"] == offsets["reflow"] == offsets["distill"] == offsets["meanflow_ft"] == 2000
    assert offsets["cd"] == 4000  # the flow-matching teacher's steps are counted and stated
    assert jobs["moons/reflow/seed0"].upstream == (
        ("init_from", "moons/rf1/seed0"),
        ("pairs_from", "moons/rf1/seed0"),
    )
    assert jobs["moons/rf1/seed0"].makes_pairs and not jobs["moons/rf1/seed0"].points
    assert jobs["moons/score_sde_ode/seed0"].run_dir == jobs["moons/score_sde/seed0"].run_dir
    assert jobs["moons/reflow/seed0"].points == (1000,)  # the head-to-head: the chain's end only
    curves = {j.id: j for j in expand(SUITES["curves"], Path("/tmp/x"), datasets=["checkerboard"], seeds=[0],
                                      methods=["dmf", "sct"], variants=[""])}
    dmf = curves["checkerboard/dmf/seed0"]  # fine-tuning curve after the 10,000-step flow-matching stage
    assert (dmf.steps, dmf.chain_offset, dmf.points) == (10000, 10000, (500, 1000, 2000, 5000, 10000))
    assert curves["checkerboard/sct/seed0"].points == (500, 1000, 2000, 5000, 10000, 20000)
    abl = expand(SUITES["ablations"], Path("/tmp/x"), seeds=[0], variants=["ratio0", ""])
    assert sorted(j.id for j in abl) == [
        "8gaussians/meanflow/seed0",
        "8gaussians/meanflow@ratio0/seed0",
        "checkerboard/meanflow/seed0",
        "checkerboard/meanflow@ratio0/seed0",
    ]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    for argv, msg in (
        (["run", "nope"], "unknown suite"),
        (["run", "smoke", "--methods", "nope"], "unknown method"),
        (["run", "smoke", "--datasets", "moons"], "unknown data set"),
        (["run", "smoke", "--seeds", "a"], "--seeds expects"),
        (["run", "smoke", "--eval-device", "tpu"], "--eval-device must be"),
        (["run", "smoke", "--train-only", "--measure-only"], "exclude each other"),
    ):
        p = subprocess.run(
            [sys.executable, "-m", "benchmarks.suite", *argv, "--out", str(tmp_path), "--dry-run"],
            cwd=root,
            capture_output=True,
            text=True,
        )
        assert p.returncode == 2 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    with pytest.raises(ValueError, match="another runner"):
        from benchmarks.suite.runner import exclusive

        with exclusive(tmp_path), exclusive(tmp_path):
            pass
    assert (
        main(["run", "smoke", "--out", str(tmp_path), "--results", str(tmp_path / "r.jsonl"), "--dry-run"])
        == 0
    )


def test_measure_only_trains_nothing_and_runs_beside_a_training_runner(tmp_path):
    """A measure-only pass takes its own lock: it runs while a (train-only) runner holds the folders, and
    with nothing trained yet it has nothing to do (it never trains)."""
    from benchmarks.suite.runner import exclusive

    with exclusive(tmp_path):
        summary = run_suite(SMOKE, out=tmp_path, results=tmp_path / "r.jsonl", jobs=1, measure_only=True)
        assert summary["run"] == 0 and summary["done"] == 0
        with pytest.raises(ValueError, match="another runner"):
            run_suite(SMOKE, out=tmp_path, results=tmp_path / "r.jsonl", jobs=1)
    assert not list(tmp_path.rglob("*.safetensors"))
    assert {r["method"] for r in records.load([tmp_path / "r.jsonl"])} <= {"data"}  # the noise floor only


def test_workers_exit_when_their_runner_is_gone(tmp_path):
    """A worker process running `exit_with_parent(runner pid)` ends by itself once the runner dies."""
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    worker = ("import sys, time; sys.path.insert(0, sys.argv[1]); "
              "from benchmarks.suite.runner import exit_with_parent; "
              "exit_with_parent(int(sys.argv[2]), every=0.1); time.sleep(60)")
    code = ("import os, subprocess, sys\n"
            f"child = subprocess.Popen([sys.executable, '-c', {worker!r}, sys.argv[1], str(os.getpid())])\n"
            "open(sys.argv[2], 'w').write(str(child.pid))\n"
            "os._exit(0)\n")
    pid_file = tmp_path / "pid"
    subprocess.run([sys.executable, "-c", code, str(repo), str(pid_file)], check=True, timeout=60)
    pid = int(pid_file.read_text())
    # The orphan notices within ~0.1 s of its start-up (importing torch: seconds, more on a loaded machine);
    # a liveness bound, not a timing: allow 90 s.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError("the orphaned worker kept running")
