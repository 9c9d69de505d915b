"""SplitMeanFlow learns a one-step map on the 2-D checkerboard without a JVP.

MeanFlow's learning test setting (tiny MLP 3 x 128, Adam 2e-3, batch 256, 1500 steps, 50% r != t, uniform
times), plain L2 (p = 0). Measured here (torch 2.13 CPU, one thread, ~13 s): 1-step sliced W2 0.103
(MeanFlow with its JVP in test_learning_toy2d: 0.130; flow matching's 1 step: 0.867). Broken on purpose:
the second half-interval evaluated at z_t instead of z_s gives 0.176, no r != t rows (flow matching) 0.917;
the threshold fails both. (Swapping λ and 1 - λ in the target still learns here, 0.112: the known-answer
tests catch that.)
"""

import pytest
import torch
from method_testnets import TinyNet

from meanflow.data import toy2d
from meanflow.evaluation.toy_metrics import sliced_wasserstein
from meanflow.methods.splitmeanflow import SplitMeanFlow

STEPS, BATCH, LR = 1500, 256, 2e-3


@pytest.mark.slow
def test_splitmeanflow_one_step_on_the_checkerboard(one_thread):
    data = toy2d.sample("checkerboard", 50000, seed=0)
    held = toy2d.sample("checkerboard", 2000, seed=1)
    method = SplitMeanFlow(ratio=0.5, time_dist="uniform")
    torch.manual_seed(0)
    net = TinyNet(shape=(2,), hidden=128, depth=3)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    g = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        x = data[torch.randint(0, len(data), (BATCH,), generator=g)]
        out = method.loss(net, x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    e = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    sw1 = sliced_wasserstein(method.sample(net, e, steps=1), held)
    assert sw1 < 0.15, f"1-step sliced W2 {sw1:.3f}"  # measured 0.103
