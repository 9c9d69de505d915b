"""Every command pins torch's threads as `train` does (`--threads`, default 1), and long generation shows
a progress bar counting network evaluations (issue 24)."""

import pytest
import torch
from cli_testkit import TINY
from torch import nn

from meanflow.cli import build_parser, main

COMMANDS = {
    "train": [], "sample": ["RUN"], "eval": ["--samples", "s.npz", "--ref", "r.npz"],
    "ref-stats": ["--images", "i", "--out", "o.npz"], "likelihood": ["RUN"],
    "reflow-pairs": ["RUN", "-n", "4"], "encode": ["imgs", "out"], "export": ["RUN", "out"],
    "convert": ["--from", "py-meanflow", "a.pth", "out"], "push": ["RUN", "--repo", "o/n"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_takes_threads(command):
    args = build_parser().parse_args([command, *COMMANDS[command], "--threads", "3"])
    assert args.threads == 3
    default = build_parser().parse_args([command, *COMMANDS[command]]).threads
    assert default == (None if command == "train" else 1)  # train: training.num_threads (default 1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "--out-dir", str(root), *TINY]) == 0
    (run,) = root.iterdir()
    return run


def test_train_threads_flag_sets_the_config(capsys):
    assert main(["train", *TINY, "--threads", "2", "--dry-run"]) == 0
    assert "num_threads: 2" in capsys.readouterr().out


def test_sample_pins_threads(run, tmp_path):
    assert main(["sample", str(run), "-n", "4", "--threads", "3", "--out", str(tmp_path / "s")]) == 0
    assert torch.get_num_threads() == 3
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s")]) == 0
    assert torch.get_num_threads() == 1


class _Velocity(nn.Module):
    """A network `net(z, t, h, y)` for 2-D points."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, z, t, h, y=None):
        return self.layer(z)


def test_generation_bar_counts_network_evaluations(monkeypatch, capsys):
    import meanflow.utils.progress as progress
    from meanflow.methods import FlowMatching
    from meanflow.sampling import generate

    monkeypatch.setattr(progress, "DELAY", 0.0)
    net = _Velocity()
    seen = []
    real = progress.NetProgress.__exit__

    def record(self, *exc):
        if self.bar is not None:
            seen.append((self.bar.n, self.bar.total))
        return real(self, *exc)

    monkeypatch.setattr(progress.NetProgress, "__exit__", record)
    x = generate(FlowMatching(), net, 0, 10, steps=7, batch_size=4, shape=(2,), num_classes=0, progress=True)
    assert x.shape == (10, 2) and seen == [(21, 21)]  # 3 batches of 7 Euler steps: 21 network calls
    # Heun: more calls than steps; the guessed total opens, then is set from the first batch
    generate(FlowMatching(solver="heun"), net, 0, 10, steps=7, batch_size=4, shape=(2,), num_classes=0,
             progress=True)
    n, total = seen[-1]
    assert n == total and n % 3 == 0 and n > 21
    assert "sample" in capsys.readouterr().err
    generate(FlowMatching(), net, 0, 10, steps=7, batch_size=4, shape=(2,), num_classes=0)  # None: not a tty
    assert capsys.readouterr().err == "" and len(seen) == 2
