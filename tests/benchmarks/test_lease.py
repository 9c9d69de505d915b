"""The GPU lease kit, its plumbing on the CPU with the smoke suite: the weights cross in two halves and are
joined and verified; training runs in the background while measure-only passes record; what was trained
but not measured comes back as checkpoints; `collect` merges the records once."""

import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from benchmarks import lease
from benchmarks.suite import records
from benchmarks.suite.jobs import expand, owed_keys
from benchmarks.suite.runner import run_suite
from benchmarks.suite.suites import SUITES
from benchmarks.suite.train import latest_run

SMOKE = SUITES["smoke"]


@pytest.fixture
def kit(tmp_path, monkeypatch):
    for name in ("LEASE", "STASH", "RUNS", "RESULTS"):
        monkeypatch.setattr(lease, name, tmp_path / name.lower())
    lease.RESULTS.mkdir()
    weights = tmp_path / "weights.pth"
    weights.write_bytes(bytes(range(256)) * 4000 + b"\0" * 100_000)
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    (mnist / "t10k-images-idx3-ubyte.gz").write_bytes(b"digits")
    return tmp_path, weights, mnist


def test_prepare_start_finish_collect(kit, one_thread):
    tmp, weights, mnist = kit
    lease.prepare(weights, mnist)
    assert (lease.LEASE / "a" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    halves = [lease.LEASE / "a" / "inception.xz.0", lease.LEASE / "b" / "inception.xz.1"]
    assert all(h.is_file() for h in halves) and sum(h.stat().st_size for h in halves) < weights.stat().st_size
    out = tmp / "out"
    lease.start(jobs=2, step_cost_s=0, out=out, device="cpu", suites=("smoke",))
    lease.finish(budget=300, jobs=1, out=out)
    assert (lease.STASH / "inception.pth").read_bytes() == weights.read_bytes()
    owed = {k for j in expand(SMOKE, lease.RUNS) for keys in owed_keys(SMOKE, j).values() for k in keys}
    got = {records.key_of(r) for r in records.load([lease.RESULTS]) if r["method"] != "data"}
    assert got == owed  # every run trained in the background and measured beside it
    assert not list(out.glob("lease-runs-*.tar"))  # nothing left unmeasured
    with tarfile.open(out / "lease-records.tar.gz") as tar:
        names = tar.getnames()
    assert "results/smoke.jsonl" in names and "logs/train.log" in names
    home = tmp / "home"
    home.mkdir()
    lease.collect(out, home, tmp / "grids", tmp / "runs-home")
    assert {records.key_of(r) for r in records.load([home]) if r["method"] != "data"} == owed
    n = len((home / "smoke.jsonl").read_text().splitlines())
    lease.collect(out, home, tmp / "grids", tmp / "runs-home")
    assert len((home / "smoke.jsonl").read_text().splitlines()) == n  # merged once


def test_trained_but_unmeasured_runs_come_back_and_are_measured_at_home(kit, one_thread):
    """The second half never arrives (e.g. the second call came too late): nothing is measured there, but
    the runs trained there come back and are measured at home without training."""
    tmp, weights, mnist = kit
    lease.prepare(weights, mnist)
    lease.start(jobs=2, step_cost_s=0, out=tmp / "out", device="cpu", suites=("smoke",))
    pid = int((lease.STASH / "trainer.pid").read_text())
    deadline = time.monotonic() + 600
    while lease._alive(pid) and time.monotonic() < deadline:
        time.sleep(1)
    (lease.LEASE / "b" / "inception.xz.1").unlink()
    lease.finish(budget=60, jobs=1, out=tmp / "out")
    assert not list(lease.RESULTS.glob("*.jsonl")) or not [
        r for r in records.load([lease.RESULTS]) if r["method"] != "data"]
    names = []
    for part in sorted((tmp / "out").glob("lease-runs-*.tar")):
        assert part.stat().st_size <= lease.PART_LIMIT + 100_000
        with tarfile.open(part) as tar:
            names += tar.getnames()
    assert sum(n.endswith("50.safetensors") and "/checkpoints/ckpt-" in n for n in names) == 4
    assert sum(n.endswith("suite_train.json") for n in names) == 4
    home_runs, home = tmp / "runs-home", tmp / "home"
    home.mkdir()
    lease.collect(tmp / "out", home, tmp / "grids", home_runs)
    summary = run_suite(SMOKE, out=home_runs, results=home / SMOKE.results, jobs=1, measure_only=True)
    assert summary["done"] == 4
    jobs = expand(SMOKE, home_runs)
    owed = {k for j in jobs for keys in owed_keys(SMOKE, j).values() for k in keys}
    assert {records.key_of(r) for r in records.load([home]) if r["method"] != "data"} == owed
    segs = json.loads((latest_run(Path(jobs[0].run_dir)) / "suite_train.json").read_text())["segments"]
    assert [(s["from"], s["to"]) for s in segs] == [(0, 50)]  # measured there, not trained again


def test_a_corrupt_or_missing_half_is_refused(kit):
    tmp, weights, mnist = kit
    with pytest.raises(ValueError, match="missing a half"):
        lease.join_weights()
    lease.prepare(weights, mnist)
    lease.STASH.mkdir()
    for f in ("inception.xz.0", "inception.sha256"):
        (lease.STASH / f).write_bytes((lease.LEASE / "a" / f).read_bytes())
    half = lease.LEASE / "b" / "inception.xz.1"
    data = bytearray(half.read_bytes())
    data[len(data) // 2] ^= 0xFF
    half.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt|sha256"):
        lease.join_weights()
    assert not (lease.STASH / "inception.pth").exists()


def test_prepare_refuses_missing_inputs(kit):
    tmp, weights, _ = kit
    with pytest.raises(ValueError, match="MNIST"):
        lease.prepare(weights, tmp / "nowhere")


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "lease-records.tar.gz").write_bytes(b"not an archive")
    for argv, msg in ((["start", "--device", "cpu", "--suites", "nope"], "unknown suite"),
                      (["collect", str(damaged)], "a returned archive is damaged"),
                      (["collect", str(tmp_path / "out")], "no such folder")):
        p = subprocess.run([sys.executable, "-m", "benchmarks.lease", *argv], cwd=root, capture_output=True,
                           text=True, env={**os.environ, "OUT": str(tmp_path / "out")})
        assert p.returncode == 2 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_finish_without_a_start_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "STASH", tmp_path / "stash")  # not the machine's own (a real lease may be on)
    with pytest.raises(ValueError, match="no lease started here"):
        lease.finish(10, 1, tmp_path / "out")
    assert not (tmp_path / "out").exists()
