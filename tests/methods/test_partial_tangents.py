"""Tangents of only the r != t rows: the same loss and gradients, a proportional cost, every route."""

import pytest
import torch
from method_testnets import TinyNet, Wrapper
from torch.utils.flop_counter import FlopCounterMode

from meanflow.errors import UserError
from meanflow.methods import FlowMatching, MeanFlow
from meanflow.methods.improved_meanflow import ImprovedMeanFlow
from meanflow.methods.jvp import jvp, lead_rows, pad_rows, take_rows
from meanflow.networks import build_network


class FullTangents(torch.nn.Module):
    """The same network, but it declares no partial tangents: every row is differentiated."""

    supports_tangents = True

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)


class TangentRows(torch.nn.Module):
    """Records how many rows each tangent-mode call differentiates (None: a plain call)."""

    supports_tangents = True
    supports_partial_tangents = True

    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, []

    def forward(self, z, t, h, y=None, tangents=None, **kwargs):
        self.rows.append(None if tangents is None else tangents[0].shape[0])
        return self.net(z, t, h, y, tangents=tangents, **kwargs)


def _perturbed(name, **kw):
    torch.manual_seed(0)
    net = build_network(name, **kw).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


DIT = dict(input_size=8, in_channels=2, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=3)
UNET = dict(img_resolution=8, in_channels=2, model_channels=8, channel_mult=(1, 2), num_blocks=1,
            attn_resolutions=(4,), dropout=0.0, num_classes=3)
CASES = [
    ("dit", DIT, (8, 2, 8, 8), lambda: MeanFlow(ratio=0.5, num_classes=3, omega=2.0, class_dropout=0.2)),
    ("unet", UNET, (6, 2, 8, 8), lambda: MeanFlow(ratio=0.25, num_classes=3)),
    ("mlp", dict(dim=2, hidden=32, depth=2, num_classes=2, guidance_cond=True), (16, 2),
     lambda: ImprovedMeanFlow(num_classes=2)),
    ("mlp", dict(dim=2, hidden=32, depth=2, num_classes=2, guidance_cond=True), (16, 2),
     lambda: ImprovedMeanFlow(num_classes=2, v_weight=0.0)),
]


@pytest.mark.parametrize("name, kw, shape, make", CASES)
def test_loss_and_gradients_equal_those_of_full_tangents(name, kw, shape, make):
    net = _perturbed(name, **kw)
    method = make()
    x = torch.randn(*shape, dtype=torch.float64)
    y = torch.randint(0, kw["num_classes"], (shape[0],))
    params = list(net.parameters())
    results = []
    for target in (TangentRows(net), FullTangents(net)):
        torch.manual_seed(1)
        out = method.loss(target, x, y)
        results.append((out, torch.autograd.grad(out.loss, params, allow_unused=True)))
    (part, g_part), (full, g_full) = results
    torch.testing.assert_close(part.loss, full.loss, rtol=1e-12, atol=1e-12)
    for k in full.metrics:
        torch.testing.assert_close(part.metrics[k], full.metrics[k], rtol=1e-12, atol=1e-12)
    for a, b in zip(g_part, g_full):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ratio, rows", [(0.0, None), (0.25, 2), (0.5, 4), (1.0, 8)])
def test_only_the_r_neq_t_rows_are_differentiated(ratio, rows):
    spy = TangentRows(_perturbed("dit", **{**DIT, "num_classes": 0}))
    MeanFlow(ratio=ratio).loss(spy, torch.randn(8, 2, 8, 8, dtype=torch.float64))
    assert spy.rows == [rows]  # one call: a plain one when no row has r != t


def test_imf_velocity_head_half_gets_no_tangent():
    spy = TangentRows(_perturbed("mlp", dim=2, hidden=32, depth=2, num_classes=2, guidance_cond=True))
    method = ImprovedMeanFlow(num_classes=2, ratio=0.5)
    method.loss(spy, torch.randn(16, 2, dtype=torch.float64), torch.randint(0, 2, (16,)))
    assert spy.rows[-1] == 8  # of a 2 x 16-row call: the 8 rows with r != t of the first half


def test_target_keeps_the_callers_row_order():
    net = _perturbed("dit", **DIT)
    g = torch.Generator().manual_seed(3)
    z, v = (torch.randn(8, 2, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.rand(8, generator=g, dtype=torch.float64)
    r = torch.where(torch.tensor([0, 1, 0, 0, 1, 1, 0, 1], dtype=torch.bool), t * 0.3, t)
    y = torch.randint(0, 3, (8,), generator=g)
    u, tgt = MeanFlow(num_classes=3).target(net, z, t, r, v, y)
    u_ref, tgt_ref = MeanFlow(num_classes=3).target(FullTangents(net), z, t, r, v, y)
    torch.testing.assert_close(u, u_ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(tgt, tgt_ref, rtol=0, atol=1e-12)
    assert not torch.equal(tgt, v)  # the r != t rows do move


def test_tangent_flops_scale_with_the_moving_rows():
    """Counted, not timed: MeanFlow's extra arithmetic over flow matching is proportional to ratio."""
    net = _perturbed("dit", **{**DIT, "num_classes": 0}).float()
    x = torch.randn(16, 2, 8, 8)

    def flops(method):
        torch.manual_seed(0)
        with FlopCounterMode(display=False) as counter:
            method.loss(net, x).loss.backward()
        return counter.get_total_flops()

    fm = flops(FlowMatching())
    extra = {ratio: flops(MeanFlow(ratio=ratio)) - fm for ratio in (0.25, 1.0)}
    assert extra[1.0] > 0.1 * fm
    assert abs(extra[0.25] / extra[1.0] - 0.25) < 0.02, extra


def test_every_jvp_route_returns_the_leading_rows():
    torch.manual_seed(0)
    net = TinyNet(shape=(3,), hidden=16, tangent_mode=True).double()
    z, v = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64)
    ones = torch.ones_like(t)
    _, ref = jvp(net, z, t, 0.5 * t, None, v, ones, ones)
    for target, use in ((net, True), (net, False), (Wrapper(net), False)):
        out, d = jvp(target, z, t, 0.5 * t, None, v[:4], ones[:4], ones[:4], use_tangents=use, rows=4)
        assert out.shape == (6, 3) and d.shape == (4, 3)
        torch.testing.assert_close(d, ref[:4], rtol=1e-10, atol=1e-12)
    _, none = jvp(net, z, t, 0.5 * t, None, v, ones, ones, rows=0)
    assert none.shape == (0, 3)


def test_row_order_helpers():
    assert lead_rows(torch.tensor([True, True, False])) == (None, 2)
    assert lead_rows(torch.tensor([False, False])) == (None, 0)
    order, n = lead_rows(torch.tensor([False, True, False, True]))
    assert n == 2 and order.tolist() == [1, 3, 0, 2]
    x, kw, none = take_rows(order, 4, torch.arange(4), {"a": torch.arange(4) * 10, "s": 1.0}, None)
    assert x.tolist() == [1, 3, 0, 2] and kw["a"].tolist() == [10, 30, 0, 20] and kw["s"] == 1.0
    assert none is None
    assert pad_rows(torch.ones(2, 3), 4).tolist() == [[1] * 3] * 2 + [[0] * 3] * 2


@pytest.mark.parametrize("rows", [0, 9])
def test_tangents_of_no_rows_or_too_many_are_user_errors(rows):
    net = _perturbed("dit", **{**DIT, "num_classes": 0})
    z = torch.randn(8, 2, 8, 8, dtype=torch.float64)
    dz = torch.randn(rows, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(UserError, match="tangent dz has shape"):
        net(z, torch.rand(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64),
            tangents=(dz, torch.ones(rows, dtype=torch.float64), torch.ones(rows, dtype=torch.float64)))
