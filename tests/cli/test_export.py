"""`meanflow export`: the folder's files, the weights it holds (== the run's own load with the same EMA),
`sample` / `eval` / `load_generator` reading it, the model card, and bad inputs (one line, exit 2,
nothing written, never a half-written folder)."""

import json
import os

import numpy as np
import pytest
import torch
from export_testkit import CONDITIONAL, train_tiny
from PIL import Image

from meanflow.cli import main
from meanflow.sampling import generate
from meanflow.training.load import load_generator

FILES = ["README.md", "config.json", "model.safetensors", "samples.png"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    run = train_tiny(tmp_path_factory.mktemp("cond"), *CONDITIONAL)
    (run / "metrics.json").write_text(json.dumps({"step": 3, "steps": 1, "sliced_wasserstein": 0.25,
                                                  "energy_distance": 0.5}))
    return run


def _one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meanflow: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("ema, decay", [(None, 0.9), ("0.999", 0.999), ("raw", None)])
def test_export_holds_the_chosen_weights_and_loads_like_the_run(run, tmp_path, capsys, ema, decay):
    out = tmp_path / "export"
    assert main(["export", str(run), str(out), *([] if ema is None else ["--ema", ema])]) == 0
    assert "exported meanflow" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == FILES
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "meanflow-export-v1" and config["weights"]["ema"] == decay
    assert config["method"]["name"] == "meanflow" and config["method"]["kwargs"]["ratio"] == 0.25
    kwargs = {"hidden": 16, "depth": 1, "num_classes": 0, "dim": 64}  # completed from the data
    assert config["network"] == {"name": "mlp", "kwargs": kwargs, "parameters": 5568}
    assert config["data"] == {"name": "digits", "shape": [1, 8, 8], "num_classes": 0, "is_latent": False}
    assert config["vae"] is None and config["weights"]["step"] == 3
    m_run, n_run, _ = load_generator(run, ema=ema)
    m_exp, n_exp, cfg = load_generator(out)
    assert cfg.method.name == "meanflow" and n_exp.meanflow_shape == (1, 8, 8) and n_exp.meanflow_export
    for k, v in n_run.state_dict().items():
        assert torch.equal(v, n_exp.state_dict()[k]), k
    for steps in (1, 2):
        a = generate(m_run, n_run, 0, 6, steps=steps, seed=3)
        assert torch.equal(a, generate(m_exp, n_exp, 0, 6, steps=steps, seed=3))
    load_generator(out, ema=decay if decay is not None else "raw")  # naming the held set is fine


def test_sample_and_eval_accept_the_export(run, tmp_path, capsys, cheap_model):
    out = tmp_path / "export"
    assert main(["export", str(run), str(out)]) == 0
    for src, name in ((run, "a"), (out, "b")):
        argv = ["sample", str(src), "-n", "8", "--steps", "2", "--seed", "5", "--out", str(tmp_path / name)]
        assert main(argv) == 0
    a, b = np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"]
    np.testing.assert_array_equal(a, b)
    assert main(["ref-stats", "--images", str(tmp_path / "a.npz"), "--out", str(tmp_path / "ref.npz"),
                 "--no-progress"]) == 0
    assert main(["eval", "--checkpoint", str(out), "--num-samples", "8", "--steps", "2", "--seed", "5",
                 "--ref", str(tmp_path / "ref.npz"), "--kid-subset-size", "4", "--no-progress"]) == 0
    assert "FID" in capsys.readouterr().out
    result = json.loads(next(out.glob("samples_n8_steps2_seed5*_eval.json")).read_text())
    assert abs(result["fid"]) < 1e-6  # the export's samples are the run's samples
    grid = np.asarray(Image.open(out / "samples.png"))
    assert grid.ndim == 2 and grid.shape[0] > 8  # a grid of several 8x8 digits, upscaled
    assert main(["sample", str(out), "-n", "2"]) == 0  # default output: inside the export folder
    assert (out / "samples" / "sample-n2-steps1-seed0.npz").is_file()


def test_model_card_and_config_of_a_conditional_run_with_metrics(cond_run, tmp_path):
    out = tmp_path / "export"
    assert main(["export", str(cond_run), str(out), "--ema", "raw"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["num_classes"] == 10 and config["weights"]["ema"] is None
    assert config["metrics"]["metrics.json"]["sliced_wasserstein"] == 0.25
    assert config["sampling"]["grid"] == {"n": 20, "steps": 1, "seed": 0}
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: meanflow\n") and "pipeline_tag: image-generation" in card
    for text in ("| method | `meanflow` |", "10 classes (class-conditional)",
                 "| training | 3 steps, batch 16", "raw weights", "sliced_wasserstein 0.25",
                 "meanflow sample path/to/this/folder", "meanflow eval --checkpoint path/to/this/folder",
                 'meanflow.load_generator("path/to/this/folder")',
                 "MeanFlowPipeline.from_pretrained", "pipe(class_labels=[0, 1, 2, 3], generator=g)",
                 "`meanflow sample path/to/this/folder -n 20 --steps 1 --seed 0`", "![samples](samples.png)"):
        assert text in card, text
    assert Image.open(out / "samples.png").size == ((10 * 9 + 1) * 6, (2 * 9 + 1) * 6)  # 2 rows of 10 classes


def _assert_nothing_written(tmp_path, keep=()):
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)
    assert left == [], left


def test_bad_inputs_are_one_line_and_write_nothing(run, tmp_path, capsys):
    line = _one_line_error(capsys, main(["export", str(tmp_path / "nope"), str(tmp_path / "o1")]))
    assert "not found" in line or "no checkpoint" in line
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep")
    line = _one_line_error(capsys, main(["export", str(run), str(full)]))
    assert "not empty" in line and (full / "x").read_text() == "keep" and len(os.listdir(full)) == 1
    line = _one_line_error(capsys, main(["export", str(run), str(tmp_path / "o2"), "--ema", "0.5"]))
    assert "has no EMA 0.5" in line and "0.9" in line
    line = _one_line_error(capsys, main(["export", str(run), str(full / "x" / "o3")]))
    assert "is a file" in line
    line = _one_line_error(capsys, main(["export", str(run), str(tmp_path / "o4"), "--include-vae"]))
    assert "latent" in line
    line = _one_line_error(capsys, main(["export", str(run), str(tmp_path / "o5"), "--device", "foo"]))
    assert "--device" in line
    _assert_nothing_written(tmp_path, keep=("full",))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(run), str(empty)]) == 0 and sorted(os.listdir(empty)) == FILES


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_no_folder(run, tmp_path, capsys, monkeypatch, error):
    import meanflow.export.write as write

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(write, "render_card", fail)  # after the weights and the grid are written
    argv = ["export", str(run), str(tmp_path / "a" / "b" / "out")]
    if isinstance(error, KeyboardInterrupt):
        assert main(argv) == 130
    else:
        assert "No space left on device" in _one_line_error(capsys, main(argv))
    _assert_nothing_written(tmp_path)


def test_a_killed_exports_staging_folder_is_removed_by_the_next(run, tmp_path):
    stale = tmp_path / ".out.tmp999999999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_folder_never_unpickles(run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(run), str(out)]) == 0
    (out / "model.safetensors").write_bytes(b"PK\x03\x04 a torch.save zip, not safetensors")
    line = _one_line_error(capsys, main(["sample", str(out), "-n", "2", "--out", str(tmp_path / "s")]))
    assert "model.safetensors" in line and not (tmp_path / "s.npz").exists()
    line = _one_line_error(capsys, main(["sample", str(out), "-n", "2", "--ema", "0.5",
                                         "--out", str(tmp_path / "s")]))
    assert "holds one set of weights (EMA 0.9)" in line
