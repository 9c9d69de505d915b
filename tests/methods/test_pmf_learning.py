"""pMF learns a one-step map on the checkerboard (a short CPU run).

A two-head MLP stands in for ``pmf-dit`` (x-prediction: both heads output points, the method reads
``u = (z - x_hat) / clip(t, 0.05, 1)``; the u-head and the auxiliary v-head share a trunk, as the
official network's last blocks branch). Trunk 2 x 128 on ``[z, Fourier(t), Fourier(h)]``, heads 2 x 128,
Adam 2e-3, batch 256, 1500 steps, uniform times (the MeanFlow protocol of test_learning_toy2d.py),
torch.func.jvp route (no tangent mode). Measured on this machine (torch 2.13 CPU, one thread, a
loaded 2-core host; ~45 s there, about 11 s unloaded):

    sample                                      sliced W2    energy distance
    pMF 1 step                                  0.299        0.065
    pMF 2 steps                                 0.335        0.081
    pMF with V = u (the (t - r) du/dt term cut) 0.838        0.598    <- the check fails on it
    pMF, logit-normal(0.8, 0.8) times           0.343        0.096
    (iMF 1 step, TinyNet 3 x 128: 0.145 / 0.015; fresh data 0.045 / 0.000; test_improved_meanflow.py)
"""

import pytest
import torch
from method_testnets import _fourier
from torch import nn

from meanflow.data import toy2d
from meanflow.evaluation.toy_metrics import energy_distance, sliced_wasserstein
from meanflow.methods import PixelMeanFlow


class TwoHeadMLP(nn.Module):
    """``net(z, t, h, head="u" | "v" | "uv") -> x_hat`` on 2-D points (``"uv"``: both, concatenated)."""

    heads = ("u", "v", "uv")

    def __init__(self, hidden=128):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(2 + 12, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.u = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))
        self.v = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, z, t, h, y=None, head="u"):
        a = self.trunk(torch.cat([z, _fourier(t)[0], _fourier(h)[0]], dim=1))
        if head == "uv":
            return torch.cat([self.u(a), self.v(a)], dim=1)
        return (self.u if head == "u" else self.v)(a)


@pytest.mark.slow
def test_pmf_learns_a_one_step_map_on_the_checkerboard(one_thread):
    data = toy2d.sample("checkerboard", 50000, seed=0)
    held = toy2d.sample("checkerboard", 2000, seed=1)
    torch.manual_seed(0)
    net = TwoHeadMLP()
    m = PixelMeanFlow(time_dist="uniform")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(1500):
        x = data[torch.randint(0, len(data), (256,), generator=g)]
        out = m.loss(net, x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    e = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    s1 = m.sample(net, e, steps=1)
    sw, ed = sliced_wasserstein(s1, held), energy_distance(s1, held)
    assert sw < 0.45, sw   # measured 0.299 (V = u: 0.838)
    assert ed < 0.2, ed    # measured 0.065 (V = u: 0.598)
    # At h = 0 the average velocity is the instantaneous one: the u-head there and the v-head agree.
    x = held[:1000]
    t = 0.1 + 0.9 * torch.rand(1000, generator=g)
    z = (1 - t[:, None]) * x + t[:, None] * e[:1000]
    with torch.no_grad():
        u0, v = m.velocity(net)(z, t, 0 * t, None), m.velocity(net, "v")(z, t, 0 * t, None)
    rel = float((u0 - v).square().sum(1).mean() / v.square().sum(1).mean())
    assert rel < 0.25, rel  # measured 0.093
