"""`meanflow ref-stats` and `meanflow eval`, driven through their own argparse registration."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_datasets import patch_build_dataset

from meanflow.cli import evaluate as evaluate_cli
from meanflow.errors import UserError

_BESIDE = Path(__file__).resolve().parents[3] / "shared" / "data"
WEIGHTS = ((_BESIDE if _BESIDE.is_dir() else Path("/work/shared/data"))
           / "inception" / "pt_inception-2015-12-05-pool3only-fcNaN.pth")


def run(argv):
    parser = argparse.ArgumentParser(prog="meanflow")
    evaluate_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _images(n, size=8, channels=3, seed=0, high=200):
    return np.random.default_rng(seed).integers(0, high, (n, size, size, channels), dtype=np.uint8)


def _ref_stats_of(tmp_path, images):
    """Save ``images`` as tmp_path/real.npz and run `ref-stats` on them into tmp_path/ref.npz."""
    np.savez(tmp_path / "real.npz", images=images)
    run(["ref-stats", "--images", str(tmp_path / "real.npz"), "--out", str(tmp_path / "ref.npz"),
         "--no-progress"])


def test_register_adds_both_subcommands():
    parser = argparse.ArgumentParser(prog="meanflow")
    evaluate_cli.register(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(["ref-stats", "--dataset", "mnist", "--split", "test", "--out", "s.npz"])
    assert a.func is evaluate_cli.run_ref_stats and a.split == "test" and a.batch_size == 50
    b = parser.parse_args(
        ["eval", "--checkpoint", "run", "--num-samples", "8", "--steps", "2", "--ref", "s.npz"]
    )
    assert b.func is evaluate_cli.run_eval and (b.num_samples, b.steps, b.fid_method) == (8, 2, "sqrtm")
    with pytest.raises(SystemExit):  # --samples and --checkpoint exclude each other
        parser.parse_args(["eval", "--samples", "x.npz", "--checkpoint", "run", "--ref", "s.npz"])


def test_ref_stats_then_eval_round_trip(tmp_path, cheap_model, capsys):
    imgs = _images(12)
    _ref_stats_of(tmp_path, imgs)
    with np.load(tmp_path / "ref.npz") as data:
        assert int(data["n"]) == 12 and data["features"].shape == (12, 6)
        assert tuple(data["image_shape"]) == (8, 8, 3)

    np.savez(tmp_path / "samples.npz", samples=imgs)
    same = run(
        [
            "eval",
            "--samples",
            str(tmp_path / "samples.npz"),
            "--ref",
            str(tmp_path / "ref.npz"),
            "--kid-subset-size",
            "6",
            "--kid-subsets",
            "10",
            "--no-progress",
        ]
    )
    assert abs(same["fid"]) < 1e-8 and abs(same["kid"]) < 1e-3
    written = json.loads((tmp_path / "samples_eval.json").read_text())
    assert written["fid"] == pytest.approx(same["fid"]) and written["num_samples"] == 12
    assert "FID" in capsys.readouterr().out

    np.savez(tmp_path / "worse.npz", samples=np.clip(imgs.astype(int) + 60, 0, 255).astype(np.uint8))
    worse = run(
        [
            "eval",
            "--samples",
            str(tmp_path / "worse.npz"),
            "--ref",
            str(tmp_path / "ref.npz"),
            "--kid-subset-size",
            "6",
            "--fid-method",
            "eigh",
            "--out",
            str(tmp_path / "o" / "w.json"),
            "--no-progress",
        ]
    )
    assert worse["fid"] > 0.01 and worse["kid"] > abs(same["kid"])
    assert json.loads((tmp_path / "o" / "w.json").read_text())["kid"] == pytest.approx(worse["kid"])


def test_eval_against_reference_images_directly(tmp_path, cheap_model):
    np.savez(tmp_path / "real.npz", images=_images(10, seed=1))
    np.savez(tmp_path / "s.npz", samples=_images(10, seed=1))
    res = run(
        ["eval", "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "real.npz"), "--no-progress"]
    )
    assert abs(res["fid"]) < 1e-8 and res["num_reference"] == 10


def test_ref_stats_from_a_dataset(tmp_path, cheap_model, monkeypatch):
    u8 = _images(7, size=6, channels=1, high=256).transpose(0, 3, 1, 2)  # grayscale [N, 1, H, W]
    _, calls = patch_build_dataset(monkeypatch, u8)
    run(
        [
            "ref-stats",
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path),
            "--split",
            "test",
            "--max-images",
            "5",
            "--out",
            str(tmp_path / "mnist.npz"),
            "--no-progress",
        ]
    )
    assert calls == [("mnist", "test", str(tmp_path), False)]
    with np.load(tmp_path / "mnist.npz") as data:
        assert int(data["n"]) == 5 and tuple(data["image_shape"]) == (6, 6, 1)
        assert "split=test" in str(data["source"])


def test_eval_from_a_checkpoint_generates_quantised_samples(tmp_path, cheap_model, monkeypatch):
    import meanflow.sampling as sampling
    import meanflow.training.load as load

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    seen = {}

    def load_generator(path, ema=None, device="cpu"):
        seen["load"] = (path, ema, device)
        return "method", "net", "cfg"

    def generate_uint8(method, net, n, steps=1, seed=0, batch_size=256, class_label=None, device="cpu",
                       rows=None, sample_options=None, progress=None):
        seen["gen"] = (method, net, n, steps, seed, batch_size, class_label)
        assert rows == (0, n) and not sample_options
        return _images(n, seed=seed)

    monkeypatch.setattr(load, "load_generator", load_generator)
    monkeypatch.setattr(sampling, "generate_uint8", generate_uint8)
    _ref_stats_of(tmp_path, _images(9, seed=5))
    res = run(
        [
            "eval",
            "--checkpoint",
            str(run_dir),
            "--num-samples",
            "9",
            "--steps",
            "2",
            "--seed",
            "5",
            "--ema",
            "raw",
            "--ref",
            str(tmp_path / "ref.npz"),
            "--kid-subset-size",
            "4",
            "--no-progress",
        ]
    )
    assert seen["load"] == (str(run_dir), "raw", "cpu")
    assert seen["gen"] == ("method", "net", 9, 2, 5, 256, None)
    samples = run_dir / "samples_n9_steps2_seed5.npz"
    np.testing.assert_array_equal(np.load(samples)["samples"], _images(9, seed=5))
    assert abs(res["fid"]) < 1e-8  # same seed -> the very same images as the reference
    written = json.loads(samples.with_name(samples.stem + "_eval.json").read_text())
    assert written["steps"] == 2 and written["checkpoint"] == str(run_dir)


def _one_line_user_error(argv, match):
    with pytest.raises(UserError, match=match) as info:
        run(argv)
    assert "\n" not in str(info.value)


def test_user_errors(tmp_path, cheap_model):
    _ref_stats_of(tmp_path, _images(6, size=16))
    np.savez(tmp_path / "small.npz", samples=_images(6, size=8))
    _one_line_user_error(
        ["eval", "--samples", str(tmp_path / "small.npz"), "--ref", str(tmp_path / "ref.npz")],
        "8x8 images .* 16x16",
    )
    np.savez(tmp_path / "empty.npz", samples=np.zeros((0, 16, 16, 3), np.uint8))
    _one_line_user_error(
        ["eval", "--samples", str(tmp_path / "empty.npz"), "--ref", str(tmp_path / "ref.npz")], "empty"
    )
    (tmp_path / "empty_dir").mkdir()
    _one_line_user_error(
        ["ref-stats", "--images", str(tmp_path / "empty_dir"), "--out", str(tmp_path / "x.npz")], "no images"
    )
    _one_line_user_error(
        ["eval", "--samples", str(tmp_path / "real.npz"), "--ref", str(tmp_path / "nope.npz")], "not found"
    )
    _one_line_user_error(
        [
            "eval",
            "--checkpoint",
            str(tmp_path / "no_run"),
            "--num-samples",
            "4",
            "--ref",
            str(tmp_path / "ref.npz"),
        ],
        "checkpoint not found",
    )
    _one_line_user_error(
        ["eval", "--checkpoint", str(tmp_path), "--num-samples", "1", "--ref", str(tmp_path / "ref.npz")],
        "at least 2",
    )


def test_wrong_weights_files(tmp_path):
    np.savez(tmp_path / "real.npz", images=_images(3))
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(1000))
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.pth")
    for weights, match in (
        ("random.pth", "not a readable"),
        ("partial.pth", "missing keys"),
        ("no.pth", "not found"),
    ):
        _one_line_user_error(
            [
                "ref-stats",
                "--images",
                str(tmp_path / "real.npz"),
                "--out",
                str(tmp_path / "s.npz"),
                "--inception-weights",
                str(tmp_path / weights),
            ],
            match,
        )
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shared FID Inception weights not present")
def test_real_inception_ref_stats_and_inception_score_refusal(tmp_path):
    np.savez(tmp_path / "real.npz", images=_images(2, size=16))
    run(
        [
            "ref-stats",
            "--images",
            str(tmp_path / "real.npz"),
            "--out",
            str(tmp_path / "ref.npz"),
            "--inception-weights",
            str(WEIGHTS),
            "--batch-size",
            "2",
            "--no-progress",
        ]
    )
    with np.load(tmp_path / "ref.npz") as data:
        assert data["mu"].shape == (2048,) and data["sigma"].shape == (2048, 2048)
        assert data["features"].shape == (2, 2048) and np.isfinite(data["sigma"]).all()
        assert float(data["features"].std()) > 0.01
    # This file has no classifier: the Inception Score is refused up front, before any embedding.
    _one_line_user_error(
        [
            "eval",
            "--samples",
            str(tmp_path / "real.npz"),
            "--ref",
            str(tmp_path / "ref.npz"),
            "--inception-weights",
            str(WEIGHTS),
            "--inception-score",
        ],
        "no classifier",
    )


def test_main_reports_user_errors_on_one_line(tmp_path, capsys):
    from meanflow.cli import main

    code = main(["eval", "--samples", str(tmp_path / "none.npz"), "--ref", str(tmp_path / "ref.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("meanflow: error: ") and err.count("\n") == 1
    assert "not found" in err
