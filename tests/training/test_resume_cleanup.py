"""Resuming after a crash: stale temp files are removed and never count as checkpoints, and the log
holds each step once (what the killed run wrote after its last checkpoint is dropped)."""

import json

from training_configs import tiny_toy

from meanflow.training import loop
from meanflow.training.checkpoint import Checkpoint, list_checkpoints


def test_resume_removes_temps_and_duplicate_log_records(tmp_path):
    cfg = tiny_toy(tmp_path, "logging.tensorboard=true")
    run = loop.train(cfg, stop_at=3, echo=lambda s: None)
    # What a run killed -9 after its checkpoint at step 3 leaves: log records past step 3 (one torn),
    # and temp files of interrupted atomic writes under the two naming patterns of the project.
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "loss": -123.0}) + "\n" + '{"step": 5, "lo')
    temps = [run / "checkpoints" / ".ckpt-0000004.tmp4242.safetensors", run / ".samples.png.tmp77",
             run / "samples" / ".step-0000004.png.tmp9", run / ".config.yaml.tmp1"]
    for p in temps:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"\0" * 4096)
    assert [c.name for c in list_checkpoints(run)] == ["ckpt-0000003.safetensors"]

    assert loop.train(cfg, resume=run, echo=lambda s: None) == run
    assert not any(p.exists() for p in temps)
    assert not [p for p in run.rglob(".*") if p.is_file()]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "lr" in r]
    assert steps == [2, 4, 6]
    assert all(r.get("loss") != -123.0 for r in records)
    assert Checkpoint(run).step == 6


def test_truncate_log_keeps_records_up_to_the_checkpoint(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": float(s)}) for s in (10, 20, 30)]
    log.write_text("\n".join(lines) + "\n")
    loop._truncate_log(log, 20)
    assert log.read_text().splitlines() == lines[:2]
    loop._truncate_log(log, 20)  # nothing to drop: untouched
    assert log.read_text().splitlines() == lines[:2]


def test_resume_at_the_last_step_writes_the_final_outputs(tmp_path):
    """A run killed after its last checkpoint but before samples.png / metrics.json / loss.png: resuming
    writes them (once in the log), and trains nothing."""
    cfg = tiny_toy(tmp_path)
    run = loop.train(cfg, echo=lambda s: None)
    before = (run / "log.jsonl").read_text()
    ckpt = list_checkpoints(run)[-1].read_bytes()
    for name in ("samples.png", "metrics.json", "loss.png"):
        (run / name).unlink()
    said = []
    assert loop.train(cfg, resume=run, echo=said.append) == run
    assert any("writing the final outputs only" in s for s in said)
    for name in ("samples.png", "metrics.json", "loss.png"):
        assert (run / name).is_file(), name
    assert (run / "log.jsonl").read_text() == before  # same records, the evaluation once
    assert list_checkpoints(run)[-1].read_bytes() == ckpt
