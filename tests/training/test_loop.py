"""The training loop: outputs, learning, exact resume, Ctrl-C, errors before any folder exists."""

import json
import os
import signal

import pytest
import torch
from training_configs import checkpoint_tensors, tiny_toy

from meanflow.errors import UserError
from meanflow.training import loop
from meanflow.training.checkpoint import Checkpoint, list_checkpoints
from meanflow.training.distributed import DistInfo


def test_run_folder_contents(tmp_path):
    run = loop.train(tiny_toy(tmp_path), echo=lambda s: None)
    assert run.name == "00000-toy-2d-meanflow"
    for name in ("config.yaml", "config.json", "log.jsonl", "samples.png", "loss.png", "metrics.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert all("lr" in r and "sec_per_step" in r for r in records if "loss" in r)
    assert Checkpoint(run).step == 6
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sliced_wasserstein"] > 0 and "energy_distance" in metrics
    assert loop.train(tiny_toy(tmp_path), echo=lambda s: None).name == "00001-toy-2d-meanflow"


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_is_bit_identical(tmp_path, accum):
    cfg = tiny_toy(tmp_path, f"training.grad_accum={accum}", "training.steps=7")
    full = loop.train(cfg, echo=lambda s: None)
    part = loop.train(cfg, stop_at=3, echo=lambda s: None)
    assert Checkpoint(part).step == 3 and not (part / "samples.png").exists()
    resumed = loop.train(cfg, resume=part, echo=lambda s: None)
    assert resumed == part
    (ca, a), (cb, b) = checkpoint_tensors(full), checkpoint_tensors(resumed)
    assert cb.step == 7 and set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert ca.state["sampler"] == cb.state["sampler"]


def test_resume_with_another_config_is_refused(tmp_path):
    part = loop.train(tiny_toy(tmp_path), stop_at=2, echo=lambda s: None)
    with pytest.raises(UserError, match="another config: training.lr"):
        loop.train(tiny_toy(tmp_path, "training.lr=0.5"), resume=part, echo=lambda s: None)
    # the length of the run may change
    run = loop.train(tiny_toy(tmp_path, "training.steps=4"), resume=part, echo=lambda s: None)
    assert Checkpoint(run).step == 4


def test_precision_auto_resumes_as_what_it_means_on_its_device(tmp_path):
    """'auto' is fp32 on a CPU: an fp32 run (e.g. trained so on a GPU) resumes with 'auto' on the CPU; bf16
    (what 'auto' means on a GPU) does not."""
    from meanflow.training.phases.resume import check_resumable

    part = loop.train(tiny_toy(tmp_path, "training.precision=fp32", "training.device=cpu"), stop_at=2,
                      echo=lambda s: None)
    run = loop.train(tiny_toy(tmp_path, "training.precision=auto", "training.device=cpu",
                              "training.steps=4"), resume=part, echo=lambda s: None)
    assert Checkpoint(run).step == 4
    with pytest.raises(UserError, match="training.precision"):
        check_resumable(Checkpoint(run), tiny_toy(tmp_path, "training.precision=bf16"))


def test_keep_last(tmp_path):
    run = loop.train(tiny_toy(tmp_path, "training.checkpoint_every=1", "training.keep_last=2"),
                     echo=lambda s: None)
    assert [c.name for c in list_checkpoints(run)] == ["ckpt-0000005.safetensors", "ckpt-0000006.safetensors"]


def test_sigint_stops_with_a_checkpoint(tmp_path):
    cfg = tiny_toy(tmp_path, "training.steps=50")
    parts = loop.build_parts(cfg)
    real, calls = parts.method, []

    class Interrupting:
        def loss(self, net, x, y=None):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return real.loss(net, x, y)

        def sample(self, *a, **k):
            return real.sample(*a, **k)

    parts.method = Interrupting()
    before = signal.getsignal(signal.SIGINT)
    run = loop.train(cfg, parts=parts, echo=lambda s: None)
    assert (Checkpoint(run).step, len(calls)) == (3, 3)
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


def test_batch_not_divisible_by_world_size(tmp_path):
    cfg = tiny_toy(tmp_path, "training.batch_size=32")
    with pytest.raises(UserError, match="not divisible by the number of processes"):
        loop._train(cfg, DistInfo(rank=0, world_size=3), torch.device("cpu"), None, None, None, print)
    assert not (tmp_path / "runs").exists()


def test_missing_data_leaves_no_run_folder(tmp_path):
    from meanflow.training.presets import resolve_config

    cfg = resolve_config("mnist", overrides=[f"logging.out_dir={tmp_path / 'runs'}",
                                             f"data.data_dir={tmp_path / 'nothing'}"])
    with pytest.raises(UserError):
        loop.train(cfg, echo=lambda s: None)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_toy_2d_learns(tmp_path):
    """One-step samples of a briefly trained MLP concentrate on the 8 Gaussian modes (noise: ~13%)."""
    import math

    from meanflow.sampling import generate
    from meanflow.training.load import load_generator

    cfg = tiny_toy(tmp_path, "data.name=8gaussians", "network.kwargs={hidden: 128, depth: 3}",
                   "data.num_points=20000", "training.batch_size=256", "training.steps=200",
                   "training.lr=3e-3", "training.warmup_steps=20", "training.ema_decays=[0.99]",
                   "logging.log_every=50")
    run = loop.train(cfg, echo=lambda s: None)
    method, net, _ = load_generator(run)
    x = generate(method, net, 0, 4000, seed=1)
    angle = torch.arange(8) * (2 * math.pi / 8)
    centres = 1.4 * torch.stack([angle.cos(), angle.sin()], 1)

    def near_mode(p):
        return float((torch.cdist(p, centres).min(1).values < 0.3).float().mean())

    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    metrics = json.loads((run / "metrics.json").read_text())
    print(f"near a mode: trained {near_mode(x):.3f}, noise {near_mode(noise):.3f}; {metrics}")
    assert near_mode(x) > 0.3 > 2 * near_mode(noise)
    assert metrics["sliced_wasserstein"] < 0.25


def test_final_grid_and_toy_report_use_the_methods_own_steps(tmp_path):
    """Flow matching draws its end-of-training samples with its own 50 Euler steps, MeanFlow with 1;
    logging.sample_steps overrides."""
    for extra, steps in ((["method.name=flow_matching"], 50), ([], 1),
                         (["method.name=flow_matching", "logging.sample_steps=3"], 3)):
        run = loop.train(tiny_toy(tmp_path, "training.steps=2", *extra), echo=lambda s: None)
        assert json.loads((run / "metrics.json").read_text())["steps"] == steps


def test_cli_ctrl_c_exits_130_with_a_checkpoint(tmp_path, monkeypatch, capsys):
    from meanflow.cli import main
    from meanflow.training.phases import interrupt

    def asked(self):  # as if Ctrl-C came during the first step
        self.requested, self._old = True, None
        return self

    monkeypatch.setattr(interrupt.StopFlag, "__enter__", asked)
    code = main(["train", "--preset", "toy-2d", "--steps", "20", "--out", str(tmp_path), "--set",
                 "network.kwargs={hidden: 16, depth: 2}", "--set", "data.num_points=512", "--set",
                 "logging.progress=false"])
    assert code == 130
    run = next(tmp_path.iterdir())
    assert Checkpoint(run).step == 1 and "Continue with: meanflow train --resume" in capsys.readouterr().out
