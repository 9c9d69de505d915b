"""`meanflow likelihood`: bits/dim of held-out data through the probability-flow ODE of a Score SDE run."""

import json
import math

from cli_testkit import TINY

from meanflow.cli import main

TOY = ["--preset", "toy-2d", "--set", "network={name: mlp, kwargs: {hidden: 64, depth: 2}}",
       "--batch-size", "256", "--set", "data.num_points=4096", "--set", "logging.progress=false",
       "--set", "logging.tensorboard=false", "--set", "logging.sample_count=16",
       "--set", "logging.sample_steps=20", "--set", "training.num_threads=1", "--set", "data.name=moons"]


def _train(runs, *argv):
    before = set(runs.iterdir()) if runs.exists() else set()
    assert main(["train", "--out-dir", str(runs), *argv]) == 0
    (run,) = set(runs.iterdir()) - before
    return run


def _bpd(capsys, run, *argv):
    assert main(["likelihood", str(run), "-n", "256", "--batch-size", "128", *argv]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "bits/dim over 256 moons test points" in line, line
    return float(line.split()[0])


def test_training_lowers_the_bits_per_dim_of_held_out_points(tmp_path, capsys):
    runs = tmp_path / "runs"
    short = _train(runs, *TOY, "--method", "score_sde", "--steps", "3")
    trained = _train(runs, *TOY, "--method", "score_sde", "--steps", "600", "--lr", "2e-3")
    capsys.readouterr()
    before, after = _bpd(capsys, short), _bpd(capsys, trained)
    # Measured: 9.14 bits/dim after 3 steps, 1.43 after 600 (moons, 256 test points, seed 0).
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before - 3.0, (before, after)
    # Same seed, same probes: the same figure; the JSON file holds what was printed.
    out = tmp_path / "bpd.json"
    again = _bpd(capsys, trained, "--out", str(out))
    assert again == after
    res = json.loads(out.read_text())
    assert res["n"] == 256 and not res["dequantized"] and f"{res['bits_per_dim']:.4f}" == f"{after:.4f}"


def test_images_are_dequantised_and_reported_per_8_bit_dimension(tmp_path, capsys):
    run = _train(tmp_path / "runs", *TINY, "--method", "score_sde", "--set", "logging.sample_steps=5")
    capsys.readouterr()
    assert main(["likelihood", str(run), "-n", "4", "--split", "train"]) == 0
    line = capsys.readouterr().out.strip()
    assert "bits/dim over 4 digits train points (dequantised 8-bit" in line, line
    # 8-bit images cost at most ~8 bits/dim plus what an untrained model wastes; never negative.
    assert 0 < float(line.split()[0]) < 20


def _one_line_error(capsys, code, text):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("meanflow: error: ") and text in err[0], err


def test_bad_input_gets_one_line_errors(tmp_path, capsys):
    run = _train(tmp_path / "runs", *TINY)  # a MeanFlow run: no likelihood
    capsys.readouterr()
    _one_line_error(capsys, main(["likelihood", str(run), "-n", "4"]), "needs a Score SDE run")
    _one_line_error(capsys, main(["likelihood", str(run), "-n", "0"]), "-n and --batch-size must be >= 1")
    _one_line_error(capsys, main(["likelihood", str(run), "--rtol", "0"]), "--rtol must be a finite number")
    _one_line_error(capsys, main(["likelihood", str(tmp_path / "missing")]), "missing")
    sde = _train(tmp_path / "runs", *TINY, "--method", "score_sde", "--set", "logging.sample_steps=5")
    capsys.readouterr()
    _one_line_error(capsys, main(["likelihood", str(sde), "-n", "100000"]), "fewer than -n 100000")
    (tmp_path / "folder").mkdir()
    _one_line_error(capsys, main(["likelihood", str(sde), "-n", "4", "--out", str(tmp_path / "folder")]),
                    "is a folder")
