"""Bad arguments found by a fuzz of the CLI (issue 24): each one is a single line `meanflow: error: ...`,
exit 2, and nothing is written. Devices, seeds, step and sample counts that cannot fit, non-finite
tolerances, latent-only flags on pixel runs."""

import pytest
from bad_input_testkit import fails_cleanly
from cli_testkit import TINY

from meanflow.cli import main

HUGE_SEED = str(2**64)  # one beyond the 64 bits torch's generators take


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny digits runs, trained once: MeanFlow and Score SDE (2-step grids)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "--out-dir", str(root), *TINY]) == 0
    assert main(["train", "--out-dir", str(root), *TINY, "--method", "score_sde",
                 "--set", "logging.sample_steps=2"]) == 0
    mf, sde = sorted(root.iterdir())
    return mf, sde


def _commands(mf, sde, out, device):
    """The six commands that take --device, each with an output that must not appear."""
    return {
        "sample": ["sample", mf, "--out", out / "s", "--device", device],
        "reflow-pairs": ["reflow-pairs", mf, "-n", "4", "--out", out / "p", "--device", device],
        "likelihood": ["likelihood", sde, "-n", "4", "--out", out / "l.json", "--device", device],
        "eval": ["eval", "--checkpoint", mf, "--num-samples", "4", "--ref", out / "r.npz",
                 "--device", device],
        "ref-stats": ["ref-stats", "--images", out, "--out", out / "r.npz", "--device", device],
        "encode": ["encode", out, out / "cache", "--device", device],
    }


@pytest.mark.parametrize("device", ["foo", "meta", "mps"])
@pytest.mark.parametrize("command", ["sample", "reflow-pairs", "likelihood", "eval", "ref-stats", "encode"])
def test_unknown_devices(runs, tmp_path, capsys, command, device):
    argv = _commands(*runs, tmp_path, device)[command]
    fails_cleanly(capsys, argv, f"--device must be cpu, cuda or cuda:N, got '{device}'", tmp_path, *runs)


@pytest.mark.parametrize("argv, text", [
    (["sample", "MF", "--seed", "-1"], "--seed must be an integer in [0, 2^64 - 1], got -1"),
    (["sample", "MF", "--seed", HUGE_SEED], f"--seed must be an integer in [0, 2^64 - 1], got {HUGE_SEED}"),
    (["likelihood", "SDE", "-n", "4", "--seed", HUGE_SEED], "--seed must be an integer in [0, 2^64 - 1]"),
    (["reflow-pairs", "MF", "-n", "4", "--seed", "-1"], "--seed must be an integer in [0, 2^64 - 1]"),
    (["eval", "--checkpoint", "MF", "--ref", "OUT/r.npz", "--seed", "-3"], "--seed must be an integer"),
    (["sample", "MF", "--steps", "99999999999"], "--steps must be an integer in [1, 100000], got 99999999"),
    (["sample", "MF", "--steps", "1000000000"], "--steps must be an integer in [1, 100000]"),  # iMF: a hang
    (["eval", "--checkpoint", "MF", "--ref", "OUT/r.npz", "--steps", "1000000000"], "--steps must be"),
    (["reflow-pairs", "MF", "-n", "4", "--solver", "euler", "--steps", "99999999999"], "--steps must be"),
    (["sample", "MF", "-n", "100000000000000"], "-n 100000000000000 samples of shape [1, 8, 8] need"),
    (["likelihood", "SDE", "-n", "100000000000"], "-n 100000000000 points of shape [1, 8, 8] need"),
    (["likelihood", "SDE", "-n", "4", "--atol", "inf"], "--atol must be a finite number > 0, got inf"),
    (["likelihood", "SDE", "-n", "4", "--rtol", "nan"], "--rtol must be a finite number > 0, got nan"),
    (["reflow-pairs", "MF", "-n", "4", "--atol", "inf"], "--atol must be a finite number > 0, got inf"),
    (["sample", "MF", "--no-decode"], "--no-decode applies to latent models"),
    (["sample", "MF", "--vae", "some/vae"], "--vae applies to latent models"),
    (["sample", "MF", "--vae", "some/vae", "--no-decode"], "--vae and --no-decode apply to latent models"),
    (["eval", "--checkpoint", "MF", "--ref", "OUT/r.npz", "--vae", "v"], "--vae applies to latent models"),
    (["sample", "MF", "--threads", "-2"], "--threads must be >= 0"),
])
def test_bad_values(runs, tmp_path, capsys, cheap_model, monkeypatch, argv, text):
    import numpy as np

    mf, sde = runs
    np.savez(tmp_path / "r.npz", mu=np.zeros(6), sigma=np.eye(6))
    names = {"MF": mf, "SDE": sde}
    argv = [names.get(a, str(a).replace("OUT", str(tmp_path))) for a in argv]
    if argv[0] in ("sample", "reflow-pairs") and "--out" not in argv:
        argv += ["--out", tmp_path / "out"]
    fails_cleanly(capsys, [*argv, "--no-progress"], text, tmp_path, mf, sde)


@pytest.mark.parametrize("override, text", [
    (["--seed", HUGE_SEED], f"training.seed must be in [0, 2^64 - 1], got {HUGE_SEED}"),
    (["--seed", "-1"], "training.seed must be in [0, 2^64 - 1], got -1"),
    (["--set", "logging.sample_count=100000000000"], "logging.sample_count must be in [1, 65536]"),
    (["--set", "logging.sample_steps=99999999999"], "logging.sample_steps must be in [1, 100000]"),
    (["--preset", "toy-2d", "--set", "data.num_points=100000000000"], "100000000000 points of"),
    (["--threads", "-1"], "training.num_threads must be >= 0"),
])
def test_train_values_that_cannot_work(tmp_path, capsys, override, text):
    fails_cleanly(capsys, ["train", "--out-dir", tmp_path / "runs", *TINY, *override], text, tmp_path)
    assert not (tmp_path / "runs").exists()
