"""MeanFlow through a real DistributedDataParallel wrapper (gloo, one process): both JVP routes
call the wrapper, so DDP's reducer sees the backward (SPEC §4 trap 1), and the gradients equal the
unwrapped network's."""

import pytest
import torch
import torch.distributed as dist
from method_testnets import TinyNet
from torch.nn.parallel import DistributedDataParallel as DDP

from meanflow.methods import MeanFlow


@pytest.fixture
def process_group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("tangent_mode", [True, False])
def test_meanflow_loss_through_ddp(process_group, tangent_mode):
    torch.manual_seed(0)
    net = TinyNet(shape=(3,), hidden=16, tangent_mode=tangent_mode)
    ddp = DDP(net)
    x, noise = torch.randn(8, 3), torch.randn(8, 3)
    t = torch.rand(8) * 0.9 + 0.05
    r = t * torch.rand(8)
    calls = []
    handle = ddp.register_forward_pre_hook(lambda m, a: calls.append(1))
    for _ in range(2):  # DDP raises on the 2nd forward if the 1st backward's reduction never ran
        net.zero_grad()
        MeanFlow().loss(ddp, x, noise=noise, t=t, r=r).loss.backward()
    handle.remove()
    assert len(calls) == 2  # the wrapper itself was called, not .module
    g_ddp = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    MeanFlow().loss(net, x, noise=noise, t=t, r=r).loss.backward()
    for a, b in zip(g_ddp, (p.grad for p in net.parameters())):
        torch.testing.assert_close(a, b)
