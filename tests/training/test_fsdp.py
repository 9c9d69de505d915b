"""FSDP2 (`training.parallel=fsdp`) on CPU with gloo, 2 spawned processes, a small DiT:
gradients equal the DDP path, whole runs match DDP's, and checkpoints cross between FSDP, DDP and a
single process in both directions (they always hold full tensors)."""

import ast

import pytest
import torch
from fsdp_worker import dit_overrides, worker
from safetensors.torch import load_file
from spawn_testkit import spawn

from meanflow.training.checkpoint import Checkpoint, list_checkpoints


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    return spawn(worker, tmp_path_factory.mktemp("fsdp"))


def test_fsdp_gradients_equal_ddp(spawned):
    for rank in (0, 1):
        g = load_file(str(spawned / f"grads{rank}.safetensors"))
        names = [k[4:] for k in g if k.startswith("ddp/")]
        assert names and all(g[f"ddp/{n}"].abs().sum() > 0 for n in names if "blocks.0.fc1" in n)
        for n in names:
            torch.testing.assert_close(g[f"fsdp/{n}"], g[f"ddp/{n}"], rtol=1e-5, atol=1e-7, msg=n)
    shapes = ast.literal_eval((spawned / "shapes0.txt").read_text())
    assert shapes["blocks.0.fc1.weight"] == (64, 32)  # half of [128, 32]: really sharded


def _at(run_root, step):
    (run,) = run_root.iterdir()
    (path,) = [p for p in list_checkpoints(run) if Checkpoint(p).step == step]
    return Checkpoint(path)


def test_fsdp_run_matches_ddp_run_and_checkpoints_are_full(spawned):
    a, b = _at(spawned / "ddp", 3), _at(spawned / "fsdp", 3)
    assert a.state["parallel"] == "ddp" and b.state["parallel"] == "fsdp"
    for group in ("model/", "ema/0.999/"):
        ta, tb = a._group(group), b._group(group)
        assert ta.keys() == tb.keys()
        for k in ta:
            torch.testing.assert_close(tb[k], ta[k], rtol=1e-4, atol=1e-6, msg=group + k)
    oa, ob = a.optimizer(), b.optimizer()
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ob["state"][i][k], oa["state"][i][k], rtol=1e-4, atol=1e-8)


def test_ddp_checkpoint_resumes_under_fsdp(spawned):
    c = _at(spawned / "ddp", 4)  # the DDP run continued under FSDP, in its own run folder
    assert c.state["parallel"] == "fsdp" and all(torch.isfinite(v).all() for v in c.model().values())


def test_fsdp_checkpoint_loads_and_resumes_in_one_process(spawned, tmp_path):
    from meanflow.training.load import load_generator
    from meanflow.training.loop import train
    from meanflow.training.presets import resolve_config

    (run,) = (spawned / "fsdp").iterdir()
    method, net, cfg = load_generator(run)
    assert cfg.training.parallel == "fsdp" and net.meanflow_num_classes == 10
    over = dit_overrides(tmp_path, "single", "ddp", steps=4)
    out = train(resolve_config("digits", overrides=over), resume=run, echo=lambda s: None)
    assert Checkpoint(list_checkpoints(out)[-1]).step == 4


def test_parallel_option_is_validated():
    from meanflow.errors import UserError
    from meanflow.training.presets import resolve_config

    assert resolve_config("digits").training.parallel == "ddp"
    with pytest.raises(UserError, match="training.parallel must be 'ddp' or 'fsdp'"):
        resolve_config("digits", overrides=["training.parallel=zero3"])
