"""α-Flow learns a one-step map on the 2-D checkerboard through its whole curriculum (α from 1 to 0).

Tiny MLP (3 x 128, tangent mode), Adam 2e-3, batch 256, 1500 steps, α's sigmoid over the run (so the
last ~30% are pure MeanFlow with the JVP target, the first ~30% trajectory flow matching). Measured
here (torch 2.13 CPU, one thread): 1-step sliced W2 0.162, 2-step consistency sampling 0.153 (trajectory
sampling 0.233); MeanFlow's test in test_learning_toy2d: 0.130, flow matching's 1 step: 0.867. The
thresholds fail if the curriculum never leaves flow matching (1 step ~0.9) or a target is broken.
"""

import pytest
import torch
from method_testnets import TinyNet

from meanflow.data import toy2d
from meanflow.evaluation.toy_metrics import sliced_wasserstein
from meanflow.methods.alphaflow import AlphaFlow
from meanflow.methods.base import Progress

STEPS, BATCH, LR = 1500, 256, 2e-3


@pytest.mark.slow
def test_alphaflow_one_step_on_the_checkerboard(one_thread):
    data = toy2d.sample("checkerboard", 50000, seed=0)
    held = toy2d.sample("checkerboard", 2000, seed=1)
    method = AlphaFlow(ratio_fm=0.5)
    torch.manual_seed(0)
    net = TinyNet(shape=(2,), hidden=128, depth=3, tangent_mode=True)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    g = torch.Generator().manual_seed(0)
    alphas = []
    for step in range(STEPS):
        x = data[torch.randint(0, len(data), (BATCH,), generator=g)]
        out = method.loss(net, x, progress=Progress(step, STEPS))
        alphas.append(float(out.metrics["alpha"]))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    assert alphas[0] == 1.0 and alphas[-1] == 0.0 and 0.0 < alphas[STEPS // 2 + 30] < 0.5
    e = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    sw1 = sliced_wasserstein(method.sample(net, e, steps=1), held)
    sw2 = sliced_wasserstein(method.sample(net, e, steps=2, generator=torch.Generator().manual_seed(3)), held)
    assert sw1 < 0.2, f"1-step sliced W2 {sw1:.3f}, 2-step {sw2:.3f}"
    assert sw2 < 0.25, f"1-step sliced W2 {sw1:.3f}, 2-step {sw2:.3f}"
