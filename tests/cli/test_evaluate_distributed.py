"""`meanflow eval` under torchrun: 2 gloo processes give the same samples and FID as one process."""

import json
import os
import socket

import numpy as np
import pytest
import torch.multiprocessing as mp
from cli_testkit import CheapFeatures
from test_evaluate_cli import run

from meanflow.cli import evaluate as evaluate_cli
from meanflow.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, argv):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    evaluate_cli.load_feature_model = lambda args: CheapFeatures()
    run(argv)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    code = main(["train", "--steps", "2", "--out-dir", str(out), "--set", "logging.progress=false",
                 "--set", "logging.tensorboard=false"])
    assert code in (0, None)
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def test_eval_checkpoint_sharded_over_two_ranks_equals_one_process(tiny_run, tmp_path, monkeypatch):
    ref = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", images=ref)
    common = ["eval", "--checkpoint", str(tiny_run), "--num-samples", "13",
              "--ref", str(tmp_path / "ref.npz"), "--no-progress",
              "--kid-subsets", "2", "--kid-subset-size", "5"]
    monkeypatch.setattr(evaluate_cli, "load_feature_model", lambda args: CheapFeatures())
    single = run(common + ["--out", str(tmp_path / "one.json")])
    samples_one = np.load(tiny_run / "samples_n13_steps1_seed0.npz")["samples"]
    (tiny_run / "samples_n13_steps1_seed0.npz").unlink()

    mp.spawn(_worker, args=(2, _free_port(), common + ["--out", str(tmp_path / "two.json")]), nprocs=2)
    two = json.loads((tmp_path / "two.json").read_text())
    samples_two = np.load(tiny_run / "samples_n13_steps1_seed0.npz")["samples"]
    np.testing.assert_array_equal(samples_one, samples_two)
    assert two["num_samples"] == single["num_samples"] == 13
    assert two["fid"] == pytest.approx(single["fid"], rel=1e-9, abs=1e-9)
