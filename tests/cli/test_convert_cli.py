"""`meanflow convert --from py-meanflow`: a converted file samples; a malicious pickle is refused without
being run; bad inputs are one line `meanflow: error: ...` with exit code 2 and no output left behind."""

from __future__ import annotations

import os

import pytest
import torch
from py_meanflow_testkit import official_checkpoint

from meanflow.cli import main


class Touch:
    """Unpickling this object creates the folder `marker`: proof that the file was (wrongly) run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "checkpoint-last.pth"
    torch.save(official_checkpoint(), path)
    return path


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("meanflow: error: "), err
    for w in words:
        assert w in err, err
    return err


def test_convert_then_sample(good, tmp_path, capsys):
    out = tmp_path / "official.safetensors"
    assert main(["convert", "--from", "py-meanflow", str(good), str(out)]) == 0
    assert "EMA 0.9999, 0.99995, 0.9996" in capsys.readouterr().out
    assert main(["sample", str(out), "-n", "4", "--ema", "0.99995", "--out", str(tmp_path / "s.npz")]) == 0
    assert (tmp_path / "s.npz").is_file()
    # an existing output is not replaced without --force
    assert main(["convert", "--from", "py-meanflow", str(good), str(out)]) == 2
    _one_line_error(capsys, "exists")
    assert main(["convert", "--from", "py-meanflow", str(good), str(out), "--force"]) == 0


def test_malicious_pickle_is_refused_unrun(tmp_path, capsys):
    marker = tmp_path / "pwned"
    obj = official_checkpoint()
    obj["args"] = Touch(marker)
    torch.save(obj, tmp_path / "evil.pth")
    assert main(["convert", "--from", "py-meanflow", str(tmp_path / "evil.pth"), str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "refusing", "mkdir")
    assert not marker.exists() and not (tmp_path / "o").exists()


def _truncated(good, path):
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_architecture(good, path):
    obj = official_checkpoint()
    obj["model"] = {"net.x_embedder.proj.weight": torch.zeros(4, 3, 2, 2), "num_updates": torch.tensor(1)}
    torch.save(obj, path)


def _missing_ema(good, path):
    obj = official_checkpoint()
    for k in [k for k in obj["model"] if k.startswith("net_ema2.")]:
        del obj["model"][k]
    torch.save(obj, path)


@pytest.mark.parametrize("make, words", [
    (lambda good, p: p.write_text("not a checkpoint\n"), ("not a readable torch.save file",)),
    (lambda good, p: p.write_bytes(b""), ("empty",)),
    (_truncated, ("truncated",)),
    (_other_architecture, ("another architecture",)),
    (_missing_ema, ("no EMA weights net_ema2", "0.9996")),
    (lambda good, p: torch.save({"weights": torch.zeros(2)}, p), ("no 'model'",)),
])
def test_bad_inputs_are_one_line_errors(good, tmp_path, capsys, make, words):
    src = tmp_path / "in.pth"
    make(good, src)
    out = tmp_path / "out"
    assert main(["convert", "--from", "py-meanflow", str(src), str(out)]) == 2
    _one_line_error(capsys, *words)
    assert not out.exists()


def test_missing_file_and_unknown_format(tmp_path, capsys):
    assert main(["convert", "--from", "py-meanflow", str(tmp_path / "nope.pth"), str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "not found")
    assert main(["convert", "--from", "jax", str(tmp_path / "nope.pth"), str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "invalid choice")
