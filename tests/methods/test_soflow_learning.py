"""SoFlow learns a one-step map on the 2-D checkerboard with the official ImageNet settings (75% flow
matching, p = 1, ρ 0.1 -> 0.002 exponentially over the run; guidance inert without labels).

Tiny MLP (3 x 128), Adam 2e-3, batch 256 as the α-Flow and MeanFlow learning tests, 1000 steps (1500 gave
0.161 / 0.113 at 1.5x the time). Measured here (torch 2.13 CPU, one thread, 6-10 s): 1-step sliced W2 0.140,
2-step (consistency sampling) 0.112; MeanFlow's test (1500 steps): 0.130, flow matching's 1 step: 0.867.
Broken on purpose, the same run gives: q without the (t - s)/(t - l) factor 0.695 / 0.296, NN_l evaluated
at t instead of l 0.558 / 0.296, the surrogate's sign flipped > 1e3; so the thresholds fail a broken
consistency term.
"""

import pytest
import torch
from method_testnets import TinyNet

from meanflow.data import toy2d
from meanflow.evaluation.toy_metrics import sliced_wasserstein
from meanflow.methods.base import Progress
from meanflow.methods.soflow import SoFlow

STEPS, BATCH, LR = 1000, 256, 2e-3


@pytest.mark.slow
def test_soflow_one_step_on_the_checkerboard(one_thread):
    data = toy2d.sample("checkerboard", 50000, seed=0)
    held = toy2d.sample("checkerboard", 2000, seed=1)
    method = SoFlow()
    torch.manual_seed(0)
    net = TinyNet(shape=(2,), hidden=128, depth=3)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    g = torch.Generator().manual_seed(0)
    for step in range(STEPS):
        x = data[torch.randint(0, len(data), (BATCH,), generator=g)]
        out = method.loss(net, x, progress=Progress(step, STEPS))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    assert out.metrics["rho"].item() == pytest.approx(0.002, rel=0.01)
    e = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    sw1 = sliced_wasserstein(method.sample(net, e, steps=1), held)
    sw2 = sliced_wasserstein(method.sample(net, e, steps=2, generator=torch.Generator().manual_seed(3)), held)
    msg = f"1-step sliced W2 {sw1:.3f}, 2-step {sw2:.3f}"
    assert sw1 < 0.2, msg  # measured 0.140
    assert sw2 < 0.16, msg  # measured 0.112
