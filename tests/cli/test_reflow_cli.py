"""`meanflow reflow-pairs` and training on its pairs: flow matching -> pairs -> reflow -> distill."""

import yaml

from meanflow.cli import main
from meanflow.data.pairs import shard_name

# A tiny 2-D run: 3 steps of a 16-wide MLP, no progress bar, no TensorBoard, one thread.
TOY = ["--preset", "toy-2d", "--set", "network={name: mlp, kwargs: {hidden: 16, depth: 1}}", "--steps", "3",
       "--batch-size", "16", "--set", "data.num_points=256", "--set", "logging.progress=false",
       "--set", "logging.tensorboard=false", "--set", "logging.sample_count=16",
       "--set", "training.num_threads=1"]


def _one_line_error(capsys, code, text):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("meanflow: error: ") and text in err[0], err
    return err[0]


def _train(runs, *argv):
    before = set(runs.iterdir()) if runs.exists() else set()
    assert main(["train", *TOY, "--out-dir", str(runs), *argv]) == 0
    (run,) = set(runs.iterdir()) - before
    return run


def test_flow_matching_pairs_reflow_distill(tmp_path, capsys):
    runs, pairs = tmp_path / "runs", tmp_path / "pairs"
    fm = _train(runs, "--method", "flow_matching")
    capsys.readouterr()
    argv = ["reflow-pairs", str(fm), "-n", "40", "--out", str(pairs), "--solver", "heun", "--steps", "3",
            "--shard-size", "16", "--batch-size", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"pairs of {fm} (step 3, ema/0.999 weights, method flow_matching)")
    assert [line.split(":")[0] for line in out[1:4]] == ["shard 1/3 [0, 16)", "shard 2/3 [16, 32)",
                                                          "shard 3/3 [32, 40)"]
    assert "3 shard(s) written, 0 kept" in out[-1] and "pairs/s" in out[-1]
    assert "mean NFE 6.0 per pair" in out[-1]  # heun: 2 evaluations per step
    assert sorted(p.name for p in pairs.iterdir()) == ["manifest.json", *(shard_name(k) for k in range(3))]
    # the same command again: everything verified and kept
    assert main(argv) == 0
    assert "0 shard(s) written, 3 kept" in capsys.readouterr().out
    # the default solver: rk45 at tolerance 1e-5
    assert main(["reflow-pairs", str(fm), "-n", "8", "--out", str(tmp_path / "rk")]) == 0
    assert "rk45 (rtol 1e-05, atol 1e-05)" in capsys.readouterr().out

    on_pairs = ["--set", "data.name=pairs", "--data-dir", str(pairs)]
    rf = _train(runs, "--method", "reflow", *on_pairs, "--init-from", str(fm))
    cfg = yaml.safe_load((rf / "config.yaml").read_text())
    assert cfg["training"]["init_from"] == str(fm) and cfg["method"]["kwargs"]["time_dist"] == "uniform"
    assert "40 training samples of shape [2]" in capsys.readouterr().out  # the pairs, not the toy set
    distill = _train(runs, "--method", "distill", "--set", "method.k=2", *on_pairs, "--init-from", str(rf))
    capsys.readouterr()
    assert main(["sample", str(distill), "-n", "4", "--out", str(tmp_path / "s")]) == 0
    assert "(2 step(s)" in capsys.readouterr().out  # default_steps = k
    # a reflow run makes pairs too (3-rectified flow); a distilled map does not
    assert main(["reflow-pairs", str(rf), "-n", "4", "--out", str(tmp_path / "p3"), "--solver", "euler"]) == 0
    capsys.readouterr()
    _one_line_error(capsys, main(["reflow-pairs", str(distill), "-n", "4", "--out", str(tmp_path / "p4")]),
                    "trained with method 'distill', whose network is not an instantaneous velocity")
    assert not (tmp_path / "p4").exists()

    # another command on the same folder
    line = _one_line_error(capsys, main([*argv, "--seed", "1"]), "was written by another command")
    assert "seed is 0 there but 1 here" in line
    # a corrupt shard: training refuses the folder, the same reflow-pairs command repairs it
    shard = pairs / shard_name(1)
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    _one_line_error(capsys, main(["train", *TOY, "--out-dir", str(runs), "--method", "reflow", *on_pairs]),
                    "pairs-00001.safetensors is corrupt")
    assert main(argv) == 0
    assert "1 shard(s) written, 2 kept" in capsys.readouterr().out


def test_refusals_are_one_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    _one_line_error(capsys, main(["train", *TOY, "--out-dir", str(runs), "--method", "reflow"]),
                    "`meanflow reflow-pairs RUN -n N --out DIR`")
    _one_line_error(capsys, main(["train", *TOY, "--out-dir", str(runs), "--method", "distill", "--set",
                                  "data.name=pairs"]), "give the folder written by `meanflow reflow-pairs`")
    assert not runs.exists()
    _one_line_error(capsys, main(["reflow-pairs", "run", "--out", "x"]), "required: -n")
    _one_line_error(capsys, main(["reflow-pairs", "run", "-n", "4", "--out", "x", "--solver", "rk4"]),
                    "invalid choice: 'rk4'")
    _one_line_error(capsys, main(["reflow-pairs", "run", "-n", "4", "--out", "x", "--steps", "3"]),
                    "--steps applies to --solver heun or euler")
    _one_line_error(capsys, main(["reflow-pairs", "run", "-n", "0", "--out", "x"]), "num pairs must be >= 1")
    _one_line_error(capsys, main(["reflow-pairs", str(tmp_path / "nope"), "-n", "4", "--out", "x"]),
                    "not found")
