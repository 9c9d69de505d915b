"""DDP on CPU with gloo: 2 spawned processes on different halves of a batch get exactly the
gradients of one process on the whole batch, for the MeanFlow loss (JVP included) -- because the
method is given the DDP wrapper. Through `.module` (SPEC 4.1) they do not, and the run-time replica
check notices the drift."""


import pytest
import torch
from dist_worker import grads_of, make_problem, worker
from safetensors.torch import load_file
from spawn_testkit import spawn


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    return spawn(worker, tmp_path_factory.mktemp("ddp"))


def test_ddp_meanflow_gradients_equal_single_process(spawned):
    net, method, x, noise, t, r = make_problem()
    assert 0 < int((r < t).sum()) < len(t)
    method.loss(net, x, noise=noise, t=t, r=r).loss.backward()
    full = grads_of(net)
    for rank in (0, 1):
        g = load_file(str(spawned / f"wrapper{rank}.safetensors"))
        for name, ref in full.items():
            torch.testing.assert_close(g[name], ref, rtol=1e-5, atol=1e-6, msg=f"rank {rank} {name}")


def test_module_path_is_not_synchronised_and_drift_is_detected(spawned):
    g0 = load_file(str(spawned / "module0.safetensors"))
    g1 = load_file(str(spawned / "module1.safetensors"))
    assert any(not torch.allclose(g0[k], g1[k]) for k in g0)
    for rank in (0, 1):
        assert (spawned / f"drift{rank}.txt").read_text().startswith("detected: replicas differ")


def test_loop_under_two_processes(spawned):
    run0 = (spawned / "run0.txt").read_text()
    assert (spawned / "run1.txt").read_text() == "None"  # only rank 0 owns the run folder
    runs = sorted(p.name for p in (spawned / "runs").iterdir())
    assert runs == ["00000-toy-2d-meanflow"] and run0.endswith(runs[0])
    assert (spawned / "runs" / runs[0] / "checkpoints" / "ckpt-0000004.safetensors").is_file()
    assert (spawned / "runs" / runs[0] / "samples.png").is_file()
    for rank in (0, 1):
        assert "not divisible by the number of processes (2)" in (spawned / f"odd{rank}.txt").read_text()
    assert not (spawned / "bad").exists()
