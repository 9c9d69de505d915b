"""The straightness metric S = int_0^1 E ||(z_1 - z_0) - v(z_t, t)||^2 dt on fields with known values."""

import pytest
import torch
from torch import nn

from meanflow.evaluation.straightness import model_straightness, straightness


def test_straight_paths_have_zero_straightness():
    c = torch.tensor([1.0, -2.0, 0.5])
    s = straightness(lambda z, t: c.expand_as(z), torch.randn(16, 3), steps=20)
    assert float(s) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("steps", [1, 4, 50])
def test_time_dependent_velocity(steps):
    """v = a t (any z): the left Riemann sum visits t_i = 1 - i / K, so S = ||a||^2 Var_i(t_i)
    = ||a||^2 (K^2 - 1) / (12 K^2)."""
    a = torch.tensor([1.0, 2.0])
    s = straightness(lambda z, t: a * t + 0 * z, torch.randn(8, 2), steps=steps, reduce=False)
    assert s.shape == (8,) and s.dtype == torch.float64
    torch.testing.assert_close(s, torch.full((8,), 5 * (steps**2 - 1) / (12 * steps**2), dtype=torch.float64))


def test_curved_paths_and_the_network_form():
    class Rotation(nn.Module):  # dz/dt = J z: circular arcs, far from straight
        def forward(self, z, t, h, y=None):
            assert torch.all(h == 0)
            return torch.stack([-z[:, 1], z[:, 0]], 1)

    z = torch.randn(64, 2)
    s = float(model_straightness(Rotation(), z, steps=200))
    # arc of one radian at radius r: S = r^2 (1 - (2 sin(1/2))^2) ~ 0.0807 r^2; E r^2 = 2 for N(0, I)
    r2 = float(z.square().sum(1).mean())
    assert s == pytest.approx(r2 * (1 - (2 * torch.sin(torch.tensor(0.5))) ** 2).item(), rel=0.02)
