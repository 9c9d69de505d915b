"""The training context a method declares (`needs`): progress, a target network, a frozen teacher.
The loop passes exactly what was declared, keeps the target network beside the weights (checkpointed,
resumed bit for bit) and never trains the teacher. Methods that declare nothing get nothing."""

import dataclasses

import pytest
import torch
from training_configs import checkpoint_tensors, tiny_toy

from meanflow.errors import UserError
from meanflow.methods.base import Progress
from meanflow.training import loop
from meanflow.training.checkpoint import Checkpoint
from meanflow.training.target import TargetNetwork


class WithContext:
    """Wraps a real method; declares `needs`, records what the loop passed, and (with a target) adds a
    term that pulls the online net towards the target's output, so the target matters for the weights."""

    def __init__(self, method, needs, decays=(0.5, 0.9)):
        self.method, self.needs, self.decays, self.seen = method, frozenset(needs), decays, []

    def __getattr__(self, name):
        return getattr(self.method, name)

    def target_decay(self, progress):
        return self.decays[0] if progress.step < 3 else self.decays[1]

    def loss(self, net, x, y=None, **context):
        self.seen.append(context)
        out = self.method.loss(net, x, y)
        if "target" in context:
            z = torch.randn_like(x)
            t = torch.rand(x.shape[0])
            h = torch.zeros_like(t)
            with torch.no_grad():
                goal = context["target"](z, t, h)
            out = dataclasses.replace(out, loss=out.loss + 0.1 * (net(z, t, h) - goal).square().mean())
        if "teacher" in context:
            assert not any(p.requires_grad for p in context["teacher"].parameters())
        return out


def _parts(cfg, needs, **kw):
    parts = loop.build_parts(cfg)
    parts.method = WithContext(parts.method, needs, **kw)
    return parts


def test_progress_counts_the_optimizer_steps(tmp_path):
    cfg = tiny_toy(tmp_path, "training.grad_accum=2")
    parts = _parts(cfg, {"progress"})
    loop.train(cfg, parts=parts, echo=lambda s: None)
    assert [c["progress"] for c in parts.method.seen] == [Progress(s, 6) for s in range(6) for _ in range(2)]
    assert all(set(c) == {"progress"} for c in parts.method.seen)


def test_methods_without_needs_get_no_context(tmp_path):
    cfg = tiny_toy(tmp_path)
    parts = _parts(cfg, set())
    loop.train(cfg, parts=parts, echo=lambda s: None)
    assert parts.method.seen == [{}] * 6


def test_target_follows_the_declared_decay():
    torch.manual_seed(0)
    online = torch.nn.Linear(3, 2)
    target = TargetNetwork(online)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with torch.no_grad():
        online.weight.add_(1.0)
    target.update(online, 0.75)
    assert torch.allclose(target.net.weight, 0.75 * before["weight"] + 0.25 * online.weight)
    assert not any(p.requires_grad for p in target.net.parameters())
    target.update(online, 0.0, skip=torch.tensor(1.0))  # a skipped step leaves it as it is
    assert torch.allclose(target.net.weight, 0.75 * before["weight"] + 0.25 * online.weight)
    target.update(online, 0.0)
    assert torch.equal(target.net.weight, online.weight)


def test_target_is_checkpointed_and_resumed_bit_identically(tmp_path):
    cfg = tiny_toy(tmp_path, "training.steps=7")
    full = loop.train(cfg, parts=_parts(cfg, {"progress", "target"}), echo=lambda s: None)
    part = loop.train(cfg, parts=_parts(cfg, {"progress", "target"}), stop_at=3, echo=lambda s: None)
    resumed = loop.train(cfg, parts=_parts(cfg, {"progress", "target"}), resume=part, echo=lambda s: None)
    (_, a), (_, b) = checkpoint_tensors(full), checkpoint_tensors(resumed)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ta, tb = Checkpoint(full)._group("target/"), Checkpoint(resumed)._group("target/")
    assert ta and set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    model = Checkpoint(full).model()
    assert not all(torch.equal(ta[k], model[k]) for k in ta)  # an average, not a copy
    # a different decay schedule gives a different run: the target takes part in training
    other = loop.train(cfg, parts=_parts(cfg, {"target"}, decays=(0.0, 0.0)), echo=lambda s: None)
    assert not torch.equal(Checkpoint(other).model()["out.weight"], model["out.weight"])


def test_teacher_is_loaded_frozen_and_required(tmp_path):
    teacher_run = loop.train(tiny_toy(tmp_path), echo=lambda s: None)
    before = Checkpoint(teacher_run).ema(0.9)
    cfg = tiny_toy(tmp_path, f"training.teacher={teacher_run}", "training.teacher_ema=0.9")
    parts = _parts(cfg, {"teacher"})
    loop.train(cfg, parts=parts, echo=lambda s: None)
    teachers = {id(c["teacher"]) for c in parts.method.seen}
    assert len(teachers) == 1  # one network, loaded once
    t = parts.method.seen[0]["teacher"]
    assert all(torch.equal(v, before[k]) for k, v in t.state_dict().items())  # unchanged by training
    with pytest.raises(UserError, match="needs a teacher: set training.teacher"):
        loop.train(tiny_toy(tmp_path), parts=_parts(tiny_toy(tmp_path), {"teacher"}), echo=lambda s: None)


def test_unknown_context_is_refused(tmp_path):
    cfg = tiny_toy(tmp_path)
    with pytest.raises(UserError, match=r"unknown training context \['oracle'\]"):
        loop.train(cfg, parts=_parts(cfg, {"oracle"}), echo=lambda s: None)
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def fm_teacher(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    return loop.train(tiny_toy(tmp, "method.name=flow_matching"), echo=lambda s: None)


EXTRA = {"alphaflow": ["method.kwargs.alpha_window=[0.2, 0.6]"],  # α moves, then snaps to 0, within 7 steps
         "meanflow": ["method.kwargs.interval_weight=kim"]}


@pytest.mark.parametrize("name", ["ct", "ict", "cd", "shortcut", "alphaflow", "meanflow", "soflow"])
def test_real_methods_resume_bit_identically(tmp_path, name, fm_teacher):
    """Each context-using method through the real loop: stop at step 3 and resume equals 7 straight
    steps, weights, EMAs, optimizer and target network alike; the progress-driven curricula (CT's N(k),
    α-Flow's α, Kim et al.'s β for meanflow, SoFlow's ρ) see the same steps either way."""
    extra = [f"method.name={name}", "training.steps=7", *EXTRA.get(name, [])]
    if name == "cd":
        extra.append(f"training.teacher={fm_teacher}")
    cfg = tiny_toy(tmp_path, *extra)
    full = loop.train(cfg, echo=lambda s: None)
    part = loop.train(cfg, stop_at=3, echo=lambda s: None)
    resumed = loop.train(cfg, resume=part, echo=lambda s: None)
    (_, a), (_, b) = checkpoint_tensors(full), checkpoint_tensors(resumed)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    needs_target = "target" in loop.build_parts(cfg).method.needs
    ta, tb = Checkpoint(full)._group("target/"), Checkpoint(resumed)._group("target/")
    assert bool(ta) == needs_target and set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_init_from_starts_a_new_run_from_another_runs_weights(tmp_path, fm_teacher):
    """MeanFlow fine-tuned from a flow-matching run: the first step starts from that run's first EMA;
    a different network is refused by name, before any run folder is made."""
    src = Checkpoint(fm_teacher).ema(0.9)
    cfg = tiny_toy(tmp_path, f"training.init_from={fm_teacher}", "training.init_ema=0.9",
                   "training.steps=1", "training.lr=1e-12", "training.warmup_steps=0")
    run = loop.train(cfg, echo=lambda s: None)
    got = Checkpoint(run).model()
    assert set(got) == set(src) and all(torch.allclose(got[k], src[k], atol=1e-9) for k in src)
    one_step = ("training.steps=1", "training.lr=1e-12", "training.warmup_steps=0")
    scratch = loop.train(tiny_toy(tmp_path, *one_step), echo=lambda s: None)
    assert not torch.allclose(Checkpoint(scratch).model()["out.weight"], src["out.weight"])
    bad = tiny_toy(tmp_path / "bad", f"training.init_from={fm_teacher}",
                   "network.kwargs={hidden: 16, depth: 2}")
    with pytest.raises(UserError, match="^training.init_from: "):
        loop.train(bad, echo=lambda s: None)
    assert not (tmp_path / "bad" / "runs").exists()
    with pytest.raises(UserError, match="no EMA 0.5"):
        loop.train(tiny_toy(tmp_path, f"training.init_from={fm_teacher}", "training.init_ema=0.5"),
                   echo=lambda s: None)


def test_a_target_without_a_decay_rule_is_refused(tmp_path):
    from meanflow.methods import FlowMatching

    class NoDecay(FlowMatching):
        needs = frozenset({"target"})

    cfg = tiny_toy(tmp_path)
    parts = loop.build_parts(cfg)
    parts.method = NoDecay()
    with pytest.raises(UserError, match="needs a target network but defines no target_decay"):
        loop.train(cfg, parts=parts, echo=lambda s: None)
    assert not (tmp_path / "runs").exists()


def test_init_from_keeps_a_new_log_variance_head_fresh(tmp_path, fm_teacher):
    """Decoupled MeanFlow from a flow-matching run: every weight of the run loads (the split network has
    the same names), the log-variance head the run lacks starts at zero; the first step then trains."""
    src = Checkpoint(fm_teacher).ema(0.9)
    cfg = tiny_toy(tmp_path, "method.name=dmf", f"training.init_from={fm_teacher}", "training.init_ema=0.9",
                   "network.kwargs={hidden: 32, depth: 2, decoupled_depth: 1, log_variance: true}",
                   "training.steps=1", "training.lr=1e-12", "training.warmup_steps=0")
    got = Checkpoint(loop.train(cfg, echo=lambda s: None)).model()
    assert set(got) - set(src) == {"logvar.linear.weight", "logvar.linear.bias"}
    assert all(torch.allclose(got[k], src[k], atol=1e-9) for k in src)
    assert got["logvar.linear.weight"].abs().max() < 1e-9

