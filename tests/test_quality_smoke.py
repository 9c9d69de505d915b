"""Plumbing of benchmarks/quality.py at a toy scale: train methods a few steps, evaluate, write the
markdown section, resume from the cached runs, and keep text outside the markers."""

import json

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def quality():
    return load_benchmark("quality")


def test_update_section_keeps_other_text(quality, tmp_path):
    md = tmp_path / "r.md"
    md.write_text("# Title\n\nhand-written note\n")
    quality.update_section(md, "toy", "first\n")
    quality.update_section(md, "mnist", "images\n")
    quality.update_section(md, "toy", "second\n")
    text = md.read_text()
    assert "hand-written note" in text and "second" in text and "images" in text
    assert "first" not in text and text.count("<!-- quality:toy:begin -->") == 1


def test_toy_part_end_to_end_and_resume(quality, tmp_path, one_thread):
    out, md = tmp_path / "out", tmp_path / "results.md"
    argv = ["--part", "toy", "--toy-datasets", "checkerboard", "--toy-steps", "4", "--toy-points", "2000",
            "--toy-samples", "64", "--methods", "meanflow,flow_matching",
            "--sample-steps", "flow_matching=1,3", "--jobs", "1", "--eval-threads", "1",
            "--out", str(out), "--results", str(md)]
    quality.main(argv)
    res = json.loads((out / "toy" / "results.json").read_text())
    got = {(r["method"], r["steps"]) for r in res["rows"]}
    assert got == {("data", None), ("meanflow", 1), ("meanflow", 2), ("flow_matching", 1),
                   ("flow_matching", 3)}
    assert all(t["steps"] == 4 for t in res["trainings"])
    assert all(r["sw"] >= 0 for r in res["rows"])
    text = md.read_text()
    assert "| checkerboard | MeanFlow | 1 |" in text
    assert "| checkerboard | flow matching (Euler) | 3 |" in text
    runs = sorted((out / "toy" / "checkerboard").glob("*/0*"))
    assert len(runs) == 2
    quality.main(argv)  # finished runs are reused, not retrained
    assert sorted((out / "toy" / "checkerboard").glob("*/0*")) == runs
    res2 = json.loads((out / "toy" / "results.json").read_text())
    assert [r["sw"] for r in res2["rows"]] == [r["sw"] for r in res["rows"]]


def test_mnist_markdown(quality):
    rows = [{"method": m, "steps": k, "fid": f, "kid": 0.01, "kid_std": 0.001, "sample_s": 1.0,
             "grid": f"/tmp/g-{m}-{k}.png"}
            for m, k, f in [("meanflow", 1, 20.0), ("flow_matching", 1, 200.0), ("flow_matching", 50, 10.0)]]
    res = {"rows": rows, "trainings": [{"method": "meanflow", "steps": 10, "train_wall_s": 5.0,
                                        "sec_per_step": 0.5}],
           "plan": {"how": "--steps", "steps": 10}, "n": 200,
           "ref": {"path": "/x/mnist-test-500.npz", "n": 500, "source": "mnist test (500 images)"},
           "command": "python benchmarks/quality.py", "commit": "abc", "hardware": "cpu", "load_start": "0",
           "wall_s": 1.0, "jobs": 2, "train_threads": 1, "eval_threads": 2, "date": "today",
           "grid_dir": "/tmp",
           "preset": {"network": "unet", "batch": 64, "lr": 1e-3, "ema": 0.999}}
    res["trainings"][0]["settings"] = "ratio=0.75, t_mean=-0.6"
    text = quality.mnist_markdown(res)
    assert "biased upward" in text and "| MeanFlow | 1 | 20.00 |" in text
    assert "| MeanFlow | ratio=0.75, t_mean=-0.6 | 10 |" in text  # the run's settings, not the preset's
    assert "flow matching (Euler) 1 step 200 (10.00x MeanFlow's), best 10 at 50 steps" in text


def test_chains_add_their_upstream_runs_and_count_their_steps(quality):
    runs = quality.select_runs("distill,score_sde_rk45")
    names = [r.name for r in runs]
    # Upstream runs come along, in the order of RUNS (each before the runs that need it).
    assert set(names) == {"rf1", "reflow_half", "distill", "score_sde", "score_sde_rk45"}
    assert names.index("rf1") < names.index("reflow_half") < names.index("distill")
    by_name = {r.name: r for r in quality.RUNS}
    budget = 2000
    # Every row of the table costs the same total optimizer steps, its stages counted once.
    for r in quality.RUNS:
        if r.row and r.teacher is None:
            assert quality.chain_steps(r.trained_as or r.name, by_name, budget) == budget, r.name
    # A distillation teacher's steps are counted too (and stated in the training table).
    assert quality.chain_steps("cd", by_name, budget) == 2 * budget
    with pytest.raises(SystemExit, match="unknown method"):
        quality.select_runs("nope")
