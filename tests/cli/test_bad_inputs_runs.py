"""Bad runs and bad disks found by a fuzz of the CLI (issue 24), each a single line, exit 2, nothing
half-written: a finite but exploded checkpoint, resuming NaN weights, a Score SDE run as a distillation
teacher, converting NaN weights, a dry run of a config that cannot be built, and a full or read-only
disk where safetensors writes the file itself (checkpoints, converted files, reflow pairs)."""

import shutil

import pytest
import torch
from bad_input_testkit import fails_cleanly, tree
from cli_testkit import TINY
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from meanflow.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny digits runs, trained once: MeanFlow, Score SDE (2-step grids) and flow matching."""
    root = tmp_path_factory.mktemp("runs")
    for extra in ([], ["--method", "score_sde", "--set", "logging.sample_steps=2"],
                  ["--method", "flow_matching", "--set", "logging.sample_steps=2"]):
        assert main(["train", "--out-dir", str(root), *TINY, *extra]) == 0
    return dict(zip(("meanflow", "score_sde", "flow_matching"), sorted(root.iterdir())))


def _copy_run(run, dst, scale=None, nan=False):
    """A copy of run folder `run` whose checkpoint's float weights are multiplied by `scale` or NaN."""
    shutil.copytree(run, dst)
    (ckpt,) = (dst / "checkpoints").iterdir()
    with safe_open(str(ckpt), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for k, v in tensors.items():
        if k.startswith(("model/", "ema/")) and v.is_floating_point():
            tensors[k] = torch.full_like(v, float("nan")) if nan else v * scale
    save_file(tensors, str(ckpt), metadata=meta)
    return dst


@pytest.mark.parametrize("scale, text", [(1e8, "every pixel of all 8 samples is at least"),
                                         (1e30, "8 of 8 samples hold NaN or infinite values")])
def test_exploded_checkpoint_is_not_sampled(runs, tmp_path, capsys, scale, text):
    run = _copy_run(runs["meanflow"], tmp_path / "exploded", scale=scale)
    line = fails_cleanly(capsys, ["sample", run, "-n", "8", "--no-progress"], text, tmp_path)
    assert "the run diverged" in line


def test_resuming_nan_weights_is_refused_not_called_last_good(runs, tmp_path, capsys):
    run = _copy_run(runs["meanflow"], tmp_path / "nan", nan=True)
    line = fails_cleanly(capsys, ["train", "--resume", run, "--steps", "5"], "holds non-finite weights",
                         tmp_path)
    assert "last good" not in line and "not a good state to continue from" in line


def test_score_sde_run_is_no_teacher(runs, tmp_path, capsys):
    argv = ["train", "--out-dir", tmp_path / "r", *TINY, "--method", "cd",
            "--set", f"training.teacher={runs['score_sde']}"]
    fails_cleanly(capsys, argv, "whose network is a noise predictor (score = -net / sigma), not a velocity",
                  tmp_path, runs["score_sde"])
    assert not (tmp_path / "r").exists()


def test_convert_refuses_nan_weights(tmp_path, capsys):
    from py_meanflow_testkit import official_checkpoint

    obj = official_checkpoint()
    key = next(k for k in obj["model"] if k.startswith("net_ema1.") and obj["model"][k].is_floating_point())
    obj["model"][key] = torch.full_like(obj["model"][key], float("nan"))
    torch.save(obj, tmp_path / "nan.pth")
    for out in (tmp_path / "o", tmp_path / "o.safetensors"):
        fails_cleanly(capsys, ["convert", "--from", "py-meanflow", tmp_path / "nan.pth", out],
                      "holds non-finite weights (ema 0.99995: ", tmp_path)


@pytest.mark.parametrize("override, text", [
    (["--set", "network.kwargs.hidden=-3"], "mlp needs dim, hidden, depth >= 1"),
    (["--set", "network.kwargs.bogus=2"], "unexpected keyword argument 'bogus'"),
    (["--preset", "mnist", "--data-dir", "MISSING"], "train-images-idx3-ubyte.gz not found"),
])
def test_dry_run_builds_data_and_network(tmp_path, capsys, override, text):
    override = [a.replace("MISSING", str(tmp_path / "no")) for a in override]
    argv = ["train", "--out-dir", tmp_path / "runs", *TINY, *override, "--dry-run"]
    fails_cleanly(capsys, argv, text, tmp_path)


def test_dry_run_reports_what_it_built(tmp_path, capsys):
    assert main(["train", "--out-dir", str(tmp_path / "runs"), *TINY, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# dry run: 1797 training samples of shape [1, 8, 8], 10 classes; network mlp" in out
    assert tree(tmp_path) == []


def _disk_error(code, name):
    def writer(tensors, path, metadata=None):
        raise SafetensorError(f"Error while serializing: I/O error: {name} (os error {code})")
    return writer


@pytest.mark.parametrize("code, name", [(28, "No space left on device"), (30, "Read-only file system")])
def test_safetensors_disk_errors(runs, tmp_path, capsys, monkeypatch, code, name):
    import safetensors.torch
    from py_meanflow_testkit import official_checkpoint

    import meanflow.training.checkpoint as ck

    torch.save(official_checkpoint(), tmp_path / "good.pth")
    monkeypatch.setattr(safetensors.torch, "save_file", _disk_error(code, name))
    monkeypatch.setattr(ck, "save_file", _disk_error(code, name))
    for out in (tmp_path / "conv", tmp_path / "c.safetensors"):
        argv = ["convert", "--from", "py-meanflow", tmp_path / "good.pth", out]
        fails_cleanly(capsys, argv, name, tmp_path)
    argv = ["reflow-pairs", runs["flow_matching"], "-n", "4", "--solver", "euler", "--steps", "2",
            "--out", tmp_path / "pairs", "--no-progress"]
    fails_cleanly(capsys, argv, "cannot write a pairs shard to", tmp_path)
    # train: one line naming the checkpoint, and no run folder left (it held nothing to resume from)
    status, err = main(["train", "--out-dir", str(tmp_path / "t"), *TINY]), capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "cannot write checkpoint" in err and name in err, err
    assert not list((tmp_path / "t").iterdir())


def test_the_teacher_loader_refuses_a_score_sde_run_too(runs):
    """Library callers of `train` (and hf:// teachers) skip the CLI's check: the loader checks again."""
    from meanflow.errors import UserError
    from meanflow.training.phases.build import load_teacher
    from meanflow.training.presets import resolve_config

    cfg = resolve_config("toy-2d", overrides=["method.name=cd", f"training.teacher={runs['score_sde']}"])
    with pytest.raises(UserError, match="noise predictor"):
        load_teacher(cfg, None, torch.device("cpu"))
