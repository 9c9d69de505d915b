"""A checkpoint whose config has the flat method section of older versions loads, resumes against the
same config in `{name, kwargs}` form, and samples."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_method_config import LEGACY_FLOW_MATCHING, LEGACY_MEANFLOW
from training_configs import tiny_toy

from meanflow.cli import main
from meanflow.methods import FlowMatching, MeanFlow
from meanflow.sampling import generate
from meanflow.training import loop
from meanflow.training.checkpoint import Checkpoint, list_checkpoints
from meanflow.training.load import load_generator


def _make_legacy(path, method: dict) -> None:
    """Rewrite the config stored in checkpoint `path` with an old-style flat method section."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    config = json.loads(meta["config"])
    config["method"] = method
    save_file(tensors, str(path), metadata={**meta, "config": json.dumps(config)})


@pytest.mark.parametrize("legacy, cls, kwargs", [
    (LEGACY_FLOW_MATCHING, FlowMatching, {"t_mean": -0.4, "solver": "heun"}),
    (LEGACY_MEANFLOW, MeanFlow, {"ratio": 0.75, "norm_p": 0.5}),
])
def test_legacy_checkpoint_resumes_and_samples(tmp_path, legacy, cls, kwargs):
    # the same config in the new form: the legacy values that differ from the method's defaults
    cfg = tiny_toy(tmp_path, f"method={{name: {legacy['name']}, kwargs: {json.dumps(kwargs)}}}")
    part = loop.train(cfg, stop_at=3, echo=lambda s: None)
    _make_legacy(list_checkpoints(part)[-1], legacy)
    assert Checkpoint(part).config["method"] == legacy

    loop.check_resumable(Checkpoint(part), cfg)
    assert loop.train(cfg, resume=part, echo=lambda s: None) == part
    assert Checkpoint(part).step == 6

    method, net, old_cfg = load_generator(part)
    assert type(method) is cls and old_cfg.method == cfg.method
    x = generate(method, net, 0, 8, steps=2, seed=0)
    assert x.shape == (8, 2) and torch.isfinite(x).all()


def test_cli_resume_of_a_legacy_checkpoint(tmp_path, capsys):
    cfg = tiny_toy(tmp_path, "method={name: flow_matching, kwargs: {t_mean: -0.4, solver: heun}}")
    part = loop.train(cfg, stop_at=3, echo=lambda s: None)
    _make_legacy(list_checkpoints(part)[-1], LEGACY_FLOW_MATCHING)
    assert main(["train", "--resume", str(part), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "name: flow_matching" in out and "solver: heun" in out and "ratio" not in out
    assert main(["train", "--resume", str(part), "--steps", "5"]) == 0
    assert Checkpoint(part).step == 5
