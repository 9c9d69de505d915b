"""W&B logging in offline mode: scalars and grids reach the run file, --resume continues the same W&B
run, and a missing install or missing credentials are one line before any run folder exists."""

import json
import sys

import pytest

from meanflow.cli import main

wandb = pytest.importorskip("wandb")
from wandb_records import history  # noqa: E402

TINY = ["--preset", "toy-2d", "--set", "network.kwargs={hidden: 16, depth: 2}",
        "--set", "data.num_points=512", "--set", "logging.progress=false", "--set", "logging.log_every=2",
        "--set", "logging.sample_every=4", "--set", "logging.sample_count=64",
        "--set", "training.checkpoint_every=4"]


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _files(run):
    return sorted(run.glob("wandb/offline-run-*/run-*.wandb"))


def test_offline_run_holds_scalars_grids_and_config(tmp_path):
    assert main(["train", *TINY, "--steps", "8", "--out", str(tmp_path), "--set", "logging.wandb=true",
                 "--set", "logging.wandb_mode=offline", "--set", "logging.wandb_project=unit"]) == 0
    run = next(tmp_path.iterdir())
    run_id = (run / "wandb-run-id").read_text().strip()
    (f,) = _files(run)
    assert f.name == f"run-{run_id}.wandb"
    rows = history(f)
    logged = {int(r["_step"]): r for r in rows}
    jsonl = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for rec in jsonl:
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)):
                assert float(logged[rec["step"]][k]) == pytest.approx(v), (rec["step"], k)
    grids = [r for r in rows if r.get("samples/_type") == '"image-file"']
    assert {int(r["_step"]) for r in grids} == {4, 8}


def test_resume_continues_the_same_wandb_run(tmp_path):
    args = ["train", *TINY, "--out", str(tmp_path), "--set", "logging.wandb=true", "--set",
            "logging.wandb_mode=offline"]
    assert main([*args, "--steps", "4"]) == 0
    run = next(tmp_path.iterdir())
    first = (run / "wandb-run-id").read_text()
    assert main(["train", "--resume", str(run), "--steps", "8"]) == 0
    assert (run / "wandb-run-id").read_text() == first
    assert len(_files(run)) == 2 and all(f.name == f"run-{first.strip()}.wandb" for f in _files(run))
    assert max(int(r["_step"]) for r in history(_files(run)[-1])) == 8


def test_missing_wandb_or_credentials_is_one_line_and_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["train", *TINY, "--steps", "2", "--out", str(tmp_path), "--set", "logging.wandb=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install wandb" in err[0]
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "no-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert main(["train", *TINY, "--steps", "2", "--out", str(tmp_path), "--set", "logging.wandb=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "credentials" in err[0]
    bad = ["--set", "logging.wandb_mode=cloud"]
    assert main(["train", *TINY, "--steps", "2", "--out", str(tmp_path), *bad]) == 2
    assert not any(tmp_path.glob("0*"))
