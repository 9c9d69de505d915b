"""The `meanflow` command line: presets, dry runs, a tiny train + sample, one-line errors (exit 2)."""

import subprocess
import sys

import numpy as np
import pytest
from cli_testkit import TINY

from meanflow.cli import main
from meanflow.training.presets import PRESETS


def _one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meanflow: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_presets_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert main(["presets", "imagenet-xl2"]) == 0
    out = capsys.readouterr().out
    assert "name: dit-xl/2" in out and "kappa: 0.92" in out


def test_dry_run_prints_the_resolved_config_and_writes_nothing(tmp_path, capsys):
    code = main(["train", "--dry-run", "--out-dir", str(tmp_path / "runs"), "--set", "training.lr=1e-4",
                 "--set", "method.ratio=0.5", "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "lr: 0.0001" in out and "ratio: 0.5" in out and "seed: 3" in out and "preset: digits" in out
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_names_the_download_flag_and_the_flag_sets_the_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEANFLOW_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--preset", "mnist", "--out-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "--download" in err and "--data-dir" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    assert main(["train", "--preset", "mnist", "--download", "--dry-run"]) == 0
    assert "download: true" in capsys.readouterr().out


def test_config_file_and_flags(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("preset: toy-2d\ntraining: {lr: 0.02}\n")
    assert main(["train", "--dry-run", "--config", str(f), "--lr", "0.03"]) == 0
    out = capsys.readouterr().out
    assert "preset: toy-2d" in out and "lr: 0.03" in out


def test_train_then_sample(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "--out-dir", str(runs), *TINY]) == 0
    (run,) = runs.iterdir()
    assert run.name == "00000-digits-meanflow"
    files = ("config.yaml", "samples.png", "loss.png", "log.jsonl", "checkpoints/ckpt-0000003.safetensors")
    for name in files:
        assert (run / name).exists(), name
    capsys.readouterr()
    argv = ["sample", str(run), "-n", "12", "--steps", "2", "--seed", "1"]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        images = z["images"]
    assert images.dtype == np.uint8 and images.shape == (12, 8, 8, 1)
    assert (tmp_path / "s.png").is_file()
    # seeded: same command, same images; default output goes into the run folder
    assert main([*argv, "--ema", "raw"]) == 0
    with np.load(run / "samples" / "sample-n12-steps2-seed1-emaraw.npz") as z:
        assert z["images"].shape == images.shape
    # resume: continue the finished run for 2 more steps
    assert main(["train", "--resume", str(run), "--steps", "5"]) == 0
    assert (run / "checkpoints" / "ckpt-0000005.safetensors").is_file()
    # errors against this run
    _one_line_error(capsys, main(["sample", str(run), "--class", "10"]))  # the digits job has classes 0-9
    _one_line_error(capsys, main(["sample", str(run), "--ema", "0.5"]))
    line = _one_line_error(capsys, main(["train", "--resume", str(run), *TINY, "--lr", "0.5"]))
    assert "another config" in line
    assert sorted(p.name for p in runs.iterdir()) == [run.name]


def test_imf_sample_and_eval_with_guidance_chosen_now(tmp_path, capsys, cheap_model):
    """A tiny class-conditional iMF run: --omega/--interval change the samples (1 step), --omega 1 is
    the default; the same flags on a MeanFlow run are a one-line error."""
    runs = tmp_path / "runs"
    fast = ["--set", "training.warmup_steps=0", "--lr", "0.01"]  # so that the guidance embedders move
    assert main(["train", "--out-dir", str(runs), *TINY, *fast, "--method", "imf",
                 "--set", "data.use_labels=true"]) == 0
    (run,) = runs.iterdir()
    images = {}
    for name, flags in {"plain": [], "w1": ["--omega", "1"], "w4": ["--omega", "4", "--interval", "0", "1"],
                        "w4_part": ["--omega", "4", "--interval", "0.3", "0.8"]}.items():
        assert main(["sample", str(run), "-n", "20", "--ema", "raw", "--out", str(tmp_path / name),
                     *flags]) == 0
        with np.load(tmp_path / f"{name}.npz") as z:
            images[name] = z["images"]
    assert "omega 4.0, interval (0.3, 0.8)" in capsys.readouterr().out
    np.testing.assert_array_equal(images["plain"], images["w1"])  # the method's default: no guidance
    assert (images["w1"] != images["w4"]).any() and (images["w4"] != images["w4_part"]).any()
    # default output names say the guidance
    assert main(["sample", str(run), "-n", "4", "--omega", "2.5", "--interval", "0.3", "0.8"]) == 0
    assert (run / "samples" / "sample-n4-steps1-seed0-omega2.5-interval0.3-0.8.npz").is_file()
    # out of range: the method's check, one line
    assert "omega" in _one_line_error(capsys, main(["sample", str(run), "--omega", "0.5"]))
    assert "interval" in _one_line_error(capsys, main(["sample", str(run), "--interval", "0.8", "0.3"]))
    # eval --checkpoint generates through the same function with the same options
    np.savez(tmp_path / "ref_images.npz", images=images["w1"])
    assert main(["ref-stats", "--images", str(tmp_path / "ref_images.npz"),
                 "--out", str(tmp_path / "ref.npz"), "--no-progress"]) == 0
    ev = ["eval", "--checkpoint", str(run), "--num-samples", "20", "--ema", "raw", "--ref",
          str(tmp_path / "ref.npz"), "--kid-subset-size", "4", "--no-progress"]
    assert main([*ev, "--omega", "1"]) == 0
    assert main([*ev, "--omega", "4", "--interval", "0", "1"]) == 0
    with np.load(run / "samples_n20_steps1_seed0_omega1.npz") as z:
        np.testing.assert_array_equal(z["samples"], images["w1"])
    with np.load(run / "samples_n20_steps1_seed0_omega4_interval0_1.npz") as z:
        np.testing.assert_array_equal(z["samples"], images["w4"])
    # a MeanFlow run has no guidance input: one-line errors, nothing written
    runs_mf = tmp_path / "runs_mf"
    assert main(["train", "--out-dir", str(runs_mf), *TINY, "--set", "data.use_labels=true"]) == 0
    (mf,) = runs_mf.iterdir()
    capsys.readouterr()
    for flags in (["--omega", "4"], ["--interval", "0.3", "0.8"], ["--omega", "4", "--interval", "0", "1"]):
        line = _one_line_error(capsys, main(["sample", str(mf), "--out", str(tmp_path / "mf"), *flags]))
        assert "'meanflow' has no such input" in line and flags[0] in line
    assert not (tmp_path / "mf.npz").exists()
    line = _one_line_error(capsys, main(["eval", "--checkpoint", str(mf), "--num-samples", "4", "--ref",
                                         str(tmp_path / "ref.npz"), "--omega", "4", "--no-progress"]))
    assert "has no such input" in line
    line = _one_line_error(capsys, main(["eval", "--samples", str(tmp_path / "w1.npz"), "--ref",
                                         str(tmp_path / "ref.npz"), "--omega", "4", "--no-progress"]))
    assert "--checkpoint" in line


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--bogus-flag"], "unrecognized arguments"),
    (["train", "--set", "method.norm_p=-0.5"], "norm_p must be >= 0"),
    (["train", "--set", "method.ratio=1.2"], "ratio must be in [0, 1]"),
    (["train", "--preset", "imagenet-b2", "--set", "method.t_start=0.8", "--set", "method.t_end=0.2"],
     "t_start"),
    (["train", "--preset", "mnist", "--set", "network={name: dit-s/8, kwargs: {}}"], "not divisible"),
    (["train", "--set", "training.lr"], "KEY=VALUE"),
    (["train", "--steps", "many"], "invalid int value"),
    (["train", "--preset", "mnist", "--data-dir", "/nonexistent/mnist"], ""),
    (["train", "--resume", "/nonexistent/run"], "not found"),
    (["train", "--set", "data.augment_p=0.12"], "augmentation labels"),
    (["train", "--method", "imf", "--set", "data.use_labels=true",
      "--set", "network={name: dit-s/2, kwargs: {}}"], "which network 'dit-s/2' cannot take"),
    (["sample", "/nonexistent/run"], "not found"),
    (["nonsense"], "invalid choice"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    runs = tmp_path / "runs"
    if argv[0] == "train" and "--bogus-flag" not in argv:
        argv = [*argv, "--out-dir", str(runs)]
    code = main(argv)
    line = _one_line_error(capsys, code)
    assert message in line
    assert not runs.exists()


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "ckpt-0000001.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    _one_line_error(capsys, main(["sample", str(bad)]))


def test_console_entry_point_exit_code(tmp_path):
    """The real process: exit status 2, one line on stderr, no traceback, no run folder."""
    argv = ["train", "--preset", "nope", "--out-dir", str(tmp_path / "runs")]
    proc = subprocess.run([sys.executable, "-m", "meanflow.cli", *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("meanflow: error: unknown preset 'nope'") and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
