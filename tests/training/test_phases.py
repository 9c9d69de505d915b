"""The loop's phases one at a time (meanflow.training.phases): what each builds, advances or leaves
alone. The whole loop, resume and failure handling are tested through `loop.train` elsewhere."""

from types import SimpleNamespace

import pytest
import torch
from training_configs import tiny_toy

from meanflow.errors import UserError
from meanflow.methods.base import Progress
from meanflow.training.distributed import DistInfo
from meanflow.training.phases.build import build_run, micro_batch_size
from meanflow.training.phases.log import StepMeter, StepResult
from meanflow.training.phases.step import StepBatch, train_step, training_context


def _build(cfg, **kw):
    return build_run(cfg, DistInfo(rank=0, world_size=1), torch.device("cpu"), micro=32, ckpt=None,
                     parts=None, echo=lambda s: None, **kw)


def test_micro_batch_size_splits_the_batch_over_ranks_and_rounds():
    tc = SimpleNamespace(batch_size=32, grad_accum=2)
    assert micro_batch_size(tc, 1) == 16 and micro_batch_size(tc, 2) == 8
    with pytest.raises(UserError, match="number of processes"):
        micro_batch_size(tc, 3)
    with pytest.raises(UserError, match="grad_accum"):
        micro_batch_size(SimpleNamespace(batch_size=30, grad_accum=4), 1)


def test_step_meter_leaves_skipped_steps_out_of_the_sums():
    meter = StepMeter(torch.device("cpu"))
    meter.add(StepResult({"loss": torch.tensor(2.0)}, torch.tensor(1.0), lr=0.1))
    meter.add(StepResult({"loss": torch.tensor(float("nan"))}, torch.tensor(0.0), lr=0.2))
    assert (meter.count, float(meter.good), float(meter.sums["loss"]), meter.lr) == (2, 1.0, 2.0, 0.2)
    meter.reset(0.0)
    assert (meter.count, float(meter.good), meter.sums) == (0, 0.0, {})


def test_training_context_holds_exactly_what_the_method_declares():
    target, teacher, progress = SimpleNamespace(net="target net"), "teacher net", Progress(3, 10)
    assert training_context(frozenset(), progress, target, teacher) == {}
    assert training_context(frozenset({"progress", "target"}), progress, target, None) == {
        "progress": progress, "target": "target net"}
    assert training_context(frozenset({"teacher"}), progress, None, teacher) == {"teacher": "teacher net"}


def test_step_batch_cuts_micro_batches_with_their_extras():
    x, y, noise, aug = torch.arange(8.0), torch.arange(8), -torch.arange(8.0), torch.arange(16.0).view(8, 2)
    x1, y1, extra = StepBatch(x, y, noise, aug).micro(1, 4)
    assert x1.tolist() == [4, 5, 6, 7] and y1.tolist() == [4, 5, 6, 7]
    assert extra["noise"].tolist() == [-4, -5, -6, -7]
    assert extra["net_kwargs"]["augment_labels"].shape == (4, 2)
    assert StepBatch(x, None, None, None).micro(0, 4)[1:] == (None, {})  # no keywords a method may not take


def test_build_writes_nothing_and_builds_what_the_method_needs(tmp_path):
    run = _build(tiny_toy(tmp_path))
    assert not (tmp_path / "runs").exists()
    assert (run.step, run.start, run.total, run.run_dir, run.last_ckpt) == (0, 0, 6, None, "")
    assert run.target is None and run.teacher is None and run.ddp_net is run.net  # meanflow, one process
    assert run.check_each_step  # on the CPU by default
    assert not _build(tiny_toy(tmp_path), check_each_step=False).check_each_step
    assert _build(tiny_toy(tmp_path, "method.name=shortcut")).target is not None  # needs a target


def test_a_step_is_a_function_of_the_seed_and_the_step(tmp_path):
    """Two runs built alike take bit-identical steps (every draw is reseeded from (seed, rank, step)),
    and a step advances the position, the data order and the EMAs but not the sample copy."""
    a, b = _build(tiny_toy(tmp_path)), _build(tiny_toy(tmp_path))
    before = {k: v.clone() for k, v in a.sample_net.state_dict().items()}
    torch.manual_seed(123)  # whatever the global RNG held before
    ra = train_step(a)
    rb = train_step(b)
    assert a.step == b.step == 1 and float(ra.ok) == 1.0 and ra.lr == rb.lr
    assert a.loader.state_dict() == b.loader.state_dict()
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(va, vb), k
    assert set(ra.metrics) >= {"loss", "mse", "grad_norm"}
    assert all(torch.equal(v, a.sample_net.state_dict()[k]) for k, v in before.items())


def test_slow_samplers_draw_their_training_grids_in_fewer_steps(tmp_path):
    """Score SDE's grids and 2-D report use its `grid_steps` (100), not its 1000 sampling steps."""
    import json

    from meanflow.cli import main
    from meanflow.methods import ScoreSDE
    from meanflow.methods.flow_matching import FlowMatching

    assert ScoreSDE().grid_steps == 100 and ScoreSDE.default_steps == 1000
    assert FlowMatching().grid_steps == FlowMatching.default_steps
    assert main(["train", "--preset", "toy-2d", "--method", "score_sde", "--steps", "2",
                 "--out", str(tmp_path), "--set", "network.kwargs={hidden: 16, depth: 2}",
                 "--set", "data.num_points=512",
                 "--set", "logging.progress=false", "--set", "logging.sample_count=16"]) == 0
    run = next(tmp_path.iterdir())
    assert json.loads((run / "metrics.json").read_text())["steps"] == 100
