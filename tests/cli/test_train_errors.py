"""`meanflow train` on file-system failures: one line `meanflow: error: ...`, exit 2, nothing half-written,
the previous checkpoint intact."""

import errno
import os

import pytest
import torch

from meanflow.cli import main
from meanflow.training import checkpoint as ck
from meanflow.training import rundir

TINY = ["--preset", "toy-2d", "--steps", "4", "--set", "logging.progress=false",
        "--set", "network.kwargs={hidden: 16, depth: 2}", "--set", "data.num_points=256",
        "--set", "training.batch_size=16", "--set", "logging.sample_count=16"]


def _run(capsys, *args):
    code = main(["train", *TINY, *args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _one_error(code, err, text):
    assert code == 2 and len(err) == 1, (code, err)
    assert err[0].startswith("meanflow: error: ") and text in err[0], err[0]
    assert "Traceback" not in err[0]


def test_out_dir_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    _one_error(*_run(capsys, "--out-dir", str(f)), "it is a file, not a folder")
    _one_error(*_run(capsys, "--out-dir", str(f / "sub")), "Not a directory")
    assert f.read_text() == "x"


def test_read_only_out_dir(tmp_path, capsys, monkeypatch):
    # Root ignores permission bits, so a read-only file system is simulated at the mkdir call.
    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(rundir.Path, "mkdir", read_only)
    _one_error(*_run(capsys, "--out-dir", str(tmp_path / "ro")), "Read-only file system")
    monkeypatch.undo()
    assert not (tmp_path / "ro").exists()


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    real = ck.save_file
    calls = []

    def full_on_second(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # half a file, then the disk is full
            with open(path, "wb") as f:
                f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ck, "save_file", full_on_second)
    code, err = _run(capsys, "--out-dir", str(tmp_path), "--set", "training.checkpoint_every=2")
    _one_error(code, err, "No space left on device; the previous checkpoint")
    run = next(tmp_path.iterdir())
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt-0000002.safetensors"]
    c = ck.Checkpoint(run)
    assert c.step == 2 and all(torch.isfinite(v).all() for v in c.model().values())


def test_unwritable_log(tmp_path, capsys, monkeypatch):
    import builtins

    real_open = builtins.open

    def no_log(file, mode="r", *a, **k):
        if str(file).endswith("log.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", no_log)
    _one_error(*_run(capsys, "--out-dir", str(tmp_path)), "cannot write the training log")


@pytest.mark.parametrize("value", ["-1e-3", "-2", "-.5"])
def test_negative_numbers_are_values_not_options(capsys, value):
    code = main(["train", "--lr", value, "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"meanflow: error: training.lr must be > 0, got {float(value)}"]


def test_dmf_without_a_log_variance_head_is_refused_before_any_folder(tmp_path, capsys):
    out = tmp_path / "runs"
    _one_error(*_run(capsys, "--method", "dmf", "--out-dir", str(out)), "log-variance head")
    assert not out.exists()
