"""Non-finite losses and gradients: found in the step they happen, never in the weights, the EMAs or a
checkpoint; `stop` ends the run naming the step, `skip` drops the step (with a limit)."""

import dataclasses
import json

import pytest
import torch
from training_configs import checkpoint_tensors, tiny_toy

from meanflow.training import loop
from meanflow.training.checkpoint import Checkpoint, list_checkpoints
from meanflow.training.nonfinite import NONFINITE_EXIT_CODE, NonFiniteError, NonFiniteGuard


class BadAt:
    """Wraps a method; its loss (`kind='loss'`) or only its gradients (`kind='grad'`, finite loss) are
    NaN at the given 1-based steps."""

    def __init__(self, method, steps, kind="loss"):
        self.method, self.steps, self.kind, self.calls = method, set(steps), kind, 0

    def __getattr__(self, name):
        return getattr(self.method, name)

    def loss(self, net, x, y=None, **kw):
        out = self.method.loss(net, x, y, **kw)
        self.calls += 1
        if self.calls not in self.steps:
            return out
        if self.kind == "loss":
            return dataclasses.replace(out, loss=out.loss * float("nan"))
        p = next(net.parameters())  # d sqrt(x)/dx at 0 is inf, times 0 upstream: NaN gradients
        return dataclasses.replace(out, loss=out.loss + torch.sqrt(p.sum() * 0.0))


def _parts(cfg, steps, kind="loss"):
    parts = loop.build_parts(cfg)
    parts.method = BadAt(parts.method, steps, kind)
    return parts


def _all_finite(run):
    _, tensors = checkpoint_tensors(run)
    return all(torch.isfinite(v.float()).all() for v in tensors.values())


def test_guard_stop_names_the_first_bad_step():
    g = NonFiniteGuard("stop", 0, torch.device("cpu"))
    assert g.observe(1, torch.tensor(1.0), torch.tensor(2.0)).item() == 0.0
    g.check()
    assert g.observe(2, torch.tensor(float("inf")), torch.tensor(2.0)).item() == 1.0
    assert g.observe(3, torch.tensor(1.0), torch.tensor(2.0)).item() == 1.0  # halted from step 2 on
    with pytest.raises(NonFiniteError, match="at step 2") as e:
        g.check("ckpt-1")
    assert e.value.exit_code == NONFINITE_EXIT_CODE == 3 and "last good checkpoint: ckpt-1" in str(e.value)


def test_guard_skip_counts_consecutive_bad_steps():
    g = NonFiniteGuard("skip", 2, torch.device("cpu"))
    nan = torch.tensor(float("nan"))
    flags = [g.observe(s, torch.tensor(1.0), v).item() for s, v in
             enumerate([torch.tensor(1.0), nan, nan, torch.tensor(1.0), nan, nan], start=1)]
    assert flags == [0, 1, 1, 0, 1, 1]
    g.check()  # runs of 2 <= max_skips
    assert g.take_skipped() == 4 and g.take_skipped() == 0
    g.observe(7, torch.tensor(1.0), nan)  # a run of 3
    with pytest.raises(NonFiniteError, match=r"3 consecutive steps .*\(steps 5-7;"):
        g.check()


@pytest.mark.parametrize("kind", ["loss", "grad"])
@pytest.mark.parametrize("each_step", [True, False])
def test_stop_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, kind, each_step):
    """A NaN at step 5 stops the run naming step 5, checkpoints 2 and 4 stay (no later one), finite and
    bit-identical to a clean run's; with the GPU schedule (no per-step sync) as well."""
    monkeypatch.setattr(loop, "CHECK_EACH_STEP", each_step)
    cfg = tiny_toy(tmp_path, "training.checkpoint_every=2", "training.keep_last=5", "training.steps=8",
                   "logging.log_every=4")
    clean = loop.train(cfg, stop_at=4, echo=lambda s: None)
    with pytest.raises(NonFiniteError, match="at step 5: training stopped") as e:
        loop.train(cfg, parts=_parts(cfg, {5}, kind), echo=lambda s: None)
    run = sorted((tmp_path / "runs").iterdir())[-1]
    assert [c.name for c in list_checkpoints(run)] == ["ckpt-0000002.safetensors", "ckpt-0000004.safetensors"]
    assert str(list_checkpoints(run)[-1]) in str(e.value)
    assert _all_finite(run)
    (_, a), (_, b) = checkpoint_tensors(clean), checkpoint_tensors(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (run / "samples.png").exists()


def test_skip_leaves_weights_optimizer_and_ema_unchanged(tmp_path):
    cfg = tiny_toy(tmp_path, "training.on_nonfinite=skip", "training.checkpoint_every=1",
                   "training.keep_last=10", "training.steps=6")
    run = loop.train(cfg, parts=_parts(cfg, {3}), echo=lambda s: None)
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 6 and _all_finite(run)

    def tensors(path):
        c = Checkpoint(path)
        out = {f"model/{k}": v for k, v in c.model().items()}
        out.update({f"ema/{d}/{k}": v for d in c.ema_decays for k, v in c.ema(d).items()})
        out.update({f"optim/{i}/{k}": v for i, st in c.optimizer()["state"].items() for k, v in st.items()})
        return out

    before, at, after = tensors(ckpts[1]), tensors(ckpts[2]), tensors(ckpts[3])
    assert all(torch.equal(before[k], at[k]) for k in before)  # step 3 changed nothing
    assert not all(torch.equal(at[k], after[k]) for k in at)  # step 4 trained again
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in records if "lr" in r}
    assert by_step[4]["skipped_steps"] == 1 and "skipped_steps" not in by_step[2]
    assert all(v == v for r in records for v in r.values() if isinstance(v, float))  # no NaN logged


def test_skip_stops_after_too_many_consecutive(tmp_path):
    cfg = tiny_toy(tmp_path, "training.on_nonfinite=skip", "training.max_nonfinite_skips=2",
                   "training.steps=10")
    with pytest.raises(NonFiniteError, match=r"3 consecutive steps .*\(steps 4-6;"):
        loop.train(cfg, parts=_parts(cfg, {4, 5, 6, 7}), echo=lambda s: None)


def test_diverging_lr_exits_3_without_a_checkpoint(tmp_path, capsys):
    from meanflow.cli import main

    code = main(["train", "--preset", "toy-2d", "--steps", "30", "--lr", "1e7", "--out-dir", str(tmp_path),
                 "--set", "logging.progress=false", "--set", "training.warmup_steps=0",
                 "--set", "training.checkpoint_every=1", "--set", "training.grad_clip=null"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and err[0].startswith("meanflow: error: non-finite loss or gradients")
    runs = list(tmp_path.iterdir())  # no folder when it diverged before the first checkpoint
    assert all(list_checkpoints(run) and all(_all_finite(c) for c in list_checkpoints(run)) for run in runs)


def test_failure_before_the_first_checkpoint_leaves_no_run_folder(tmp_path):
    """Non-finite loss at step 2 of a fresh run with its first checkpoint due at step 4: no folder is left
    (nothing in it could be resumed); the same failure after a checkpoint keeps the folder."""
    cfg = tiny_toy(tmp_path, "training.checkpoint_every=4", "training.steps=8", "logging.tensorboard=true")
    with pytest.raises(NonFiniteError, match="no checkpoint was written yet"):
        loop.train(cfg, parts=_parts(cfg, {2}), echo=lambda s: None)
    assert not list((tmp_path / "runs").iterdir())
    with pytest.raises(NonFiniteError, match="last good checkpoint"):
        loop.train(cfg, parts=_parts(cfg, {6}), echo=lambda s: None)
    (run,) = (tmp_path / "runs").iterdir()
    assert [c.name for c in list_checkpoints(run)] == ["ckpt-0000004.safetensors"]
    assert (run / "config.yaml").is_file() and (run / "log.jsonl").is_file()


def test_a_failed_resume_keeps_its_run_folder(tmp_path):
    cfg = tiny_toy(tmp_path, "training.checkpoint_every=4", "training.steps=8")
    run = loop.train(cfg, stop_at=4, echo=lambda s: None)
    with pytest.raises(NonFiniteError):
        loop.train(cfg, resume=run, parts=_parts(cfg, {1}), echo=lambda s: None)
    assert [c.name for c in list_checkpoints(run)] == ["ckpt-0000004.safetensors"]
