"""MeanFlow's `tangent` option (the paper's Table 1c ablation): the target uses du/dt along (v, dr, dt)
on (z, r, t), checked against torch.func.jvp of the network written in (z, r, t)."""

import pytest
import torch

from meanflow.errors import UserError
from meanflow.methods import MeanFlow
from meanflow.methods.meanflow import TANGENTS
from meanflow.networks import build_network


@pytest.mark.parametrize("name", list(TANGENTS))
def test_target_uses_the_named_tangent(name):
    torch.manual_seed(0)
    net = build_network("mlp", dim=3, hidden=16, depth=2).double()
    b = 5
    z, v = torch.randn(b, 3, dtype=torch.float64), torch.randn(b, 3, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.7, 0.3, 0.6], dtype=torch.float64)
    r = torch.tensor([0.2, 0.5, 0.0, 0.1, 0.6], dtype=torch.float64)
    dr, dt = {"v01": (0.0, 1.0), "v00": (0.0, 0.0), "v10": (1.0, 0.0), "v11": (1.0, 1.0)}[name]

    def u_of(z_, r_, t_):  # the network as a function of (z, r, t)
        return net(z_, t_, t_ - r_, None)

    u_ref, dudt = torch.func.jvp(u_of, (z, r, t), (v, torch.full_like(r, dr), torch.full_like(t, dt)))
    want = v - (t - r).clamp(0, 1)[:, None] * dudt
    u, u_tgt = MeanFlow(tangent=name).target(net, z, t, r, v)
    torch.testing.assert_close(u, u_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u_tgt, want, rtol=1e-10, atol=1e-12)


def test_default_is_the_identity_tangent_and_bad_names_fail():
    assert MeanFlow().tangent == "v01" and TANGENTS["v01"] == (0.0, 1.0)
    with pytest.raises(UserError, match="unknown tangent"):
        MeanFlow(tangent="v02")
