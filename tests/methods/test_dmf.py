"""Decoupled MeanFlow: the network split (identity at initialisation, tangents), the log-variance loss
and both terms against float64 transcriptions of kyungmnlee/dmf@2273cce loss.py, guidance, options."""

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from meanflow.errors import UserError
from meanflow.methods import DecoupledMeanFlow
from meanflow.methods.dmf import log_variance_loss
from meanflow.networks.dit import DiT
from meanflow.networks.mlp import MLP
from meanflow.networks.unet import SongUNet


def _dit(**kw):
    return DiT(input_size=8, in_channels=2, patch_size=2, hidden_size=32, depth=4, num_heads=2, num_classes=3,
               **kw)


def _mlp(**kw):
    return MLP(dim=2, hidden=32, depth=4, num_classes=3, **kw)


def _unet(**kw):
    # 10 residual blocks: 3 in the encoder (8x8, down, 4x4), 2 middle, 5 in the decoder
    return SongUNet(img_resolution=8, in_channels=2, model_channels=8, channel_mult=(1, 2), num_blocks=1,
                    attn_resolutions=(4,), dropout=0.0, num_classes=3, **kw)


def _jiggle(net):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("make,shape", [(_dit, (5, 2, 8, 8)), (_mlp, (5, 2)), (_unet, (5, 2, 8, 8))])
def test_split_network_is_the_flow_model_at_initialisation(make, shape):
    torch.manual_seed(0)
    flow = _jiggle(make())
    dmf = make(decoupled_depth=2, log_variance=True)
    missing = dmf.load_state_dict(flow.state_dict(), strict=False)
    assert sorted(missing.missing_keys) == ["logvar.linear.bias", "logvar.linear.weight"]
    z, t, y = torch.randn(*shape), torch.rand(5), torch.tensor([0, 1, 2, 3, 1])
    zero = torch.zeros(5)
    assert torch.equal(dmf(z, t, zero, y), flow(z, t, zero, y))   # u(z, t, t) = v(z, t), bit for bit
    assert not torch.allclose(dmf(z, t, 0.5 * t, y), flow(z, t, 0.5 * t, y))
    assert torch.equal(dmf.logvar(t, 0.5 * t), zero)


@pytest.mark.parametrize("make,shape", [(_dit, (4, 2, 8, 8)), (_mlp, (4, 2)), (_unet, (4, 2, 8, 8))])
def test_split_network_tangent_matches_func_jvp(make, shape):
    torch.manual_seed(1)
    net = _jiggle(make(decoupled_depth=2)).double()
    z, t = torch.randn(*shape, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    h, y = 0.6 * t, torch.tensor([0, 1, 2, 3])
    dz, dt, dh = torch.randn_like(z), torch.ones_like(t), torch.ones_like(t)
    out, dout = net(z, t, h, y, tangents=(dz, dt, dh))
    with sdpa_kernel(SDPBackend.MATH):
        ref, dref = torch.func.jvp(lambda a, b, c: net(a, b, c, y), (z, t, h), (dz, dt, dh))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(dout, dref)
    _, part = net(z, t, h, y, tangents=(dz[:2], dt[:2], dh[:2]))
    torch.testing.assert_close(part, dref[:2])


def test_log_variance_loss_at_hand_computed_points():
    pred, tgt = torch.ones(2, 2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    lv = torch.tensor([0.0, math.log(2.0)], dtype=torch.float64)
    got = log_variance_loss(pred, tgt, lv)
    torch.testing.assert_close(got, torch.tensor([math.log(1.01), math.log(0.51) + math.log(2.0)],
                                                 dtype=torch.float64))


def _official_terms(net, x, e_fm, e, t_fm, t, r, y, omega, g_min, g_max, kept):
    """loss.py DMFLoss.__call__ in float64 with the model called as net(z, t, h = t - r, y)."""
    def guidance(z, tt, v):
        if omega == 0:
            return v
        with torch.no_grad():
            null = torch.full_like(y, 3)
            diff = net(z, tt, torch.zeros_like(tt), y) - net(z, tt, torch.zeros_like(tt), null)
        ids = ((tt >= g_min) & (tt <= g_max) & kept)[:, None]
        return torch.where(ids, v + omega * diff, v)

    def log_lv(a, b, lv):
        return torch.log((1 / lv.exp()) * ((a - b) ** 2).mean(1) + 0.01) + lv

    z_fm, v_fm = (1 - t_fm[:, None]) * x + t_fm[:, None] * e_fm, e_fm - x
    fm = log_lv(net(z_fm, t_fm, torch.zeros_like(t_fm), y), guidance(z_fm, t_fm, v_fm).detach(),
                net.logvar(t_fm, torch.zeros_like(t_fm)))
    z, v = (1 - t[:, None]) * x + t[:, None] * e, e - x
    v_g = guidance(z, t, v).detach()

    def model(z_, t_, r_):
        return net(z_, t_, t_ - r_, y)

    u, dudt = torch.func.jvp(model, (z, t, r), (v_g, torch.ones_like(t), torch.zeros_like(r)))
    mf = log_lv(u, (v_g + (r - t)[:, None] * dudt).detach(), net.logvar(t, t - r))
    return 0.5 * (fm + mf)


@pytest.mark.parametrize("omega", [0.0, 0.6])
def test_terms_equal_the_official_loss(omega):
    torch.manual_seed(2)
    net = _jiggle(_mlp(decoupled_depth=2, log_variance=True)).double()
    with torch.no_grad():
        net.logvar.linear.weight.normal_(0, 0.1)  # a non-zero variance head
    g = torch.Generator().manual_seed(3)
    x, e_fm, e = (torch.randn(8, 2, generator=g, dtype=torch.float64) for _ in range(3))
    t_fm, a, b = (torch.rand(8, generator=g, dtype=torch.float64) for _ in range(3))
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    kept = y != 3
    m = DecoupledMeanFlow(omega=omega, g_max=0.7, num_classes=3)
    fm, _ = m.fm_term(net, x, e_fm, t_fm, y, kept)
    mf, _, _ = m.mf_term(net, x, e, t, r, y, kept)
    got = (0.5 * (fm + mf)).mean()
    ref = _official_terms(net, x, e_fm, e, t_fm, t, r, y, omega, 0.0, 0.7, kept).mean()
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    ga = torch.autograd.grad(got, list(net.parameters()))
    gb = torch.autograd.grad(ref, list(net.parameters()))
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-11)


def test_loss_runs_and_options_are_checked():
    torch.manual_seed(0)
    net = _mlp(decoupled_depth=2, log_variance=True)
    y = torch.tensor([0, 1, 2] * 2)
    out = DecoupledMeanFlow(num_classes=3, omega=0.6).loss(net, torch.randn(6, 2), y)
    out.loss.backward()
    assert net.logvar.linear.weight.grad.abs().sum() > 0 and set(out.metrics) >= {"fm_mse", "mf_mse"}
    with pytest.raises(UserError, match="log-variance head"):
        DecoupledMeanFlow().loss(MLP(dim=2), torch.randn(4, 2))
    with pytest.raises(UserError, match="omega"):
        DecoupledMeanFlow(omega=1.2, num_classes=3)
    with pytest.raises(UserError, match="num_classes"):
        DecoupledMeanFlow(omega=0.5)
    with pytest.raises(UserError, match="decoupled_depth"):
        MLP(dim=2, depth=2, decoupled_depth=2)
    with pytest.raises(UserError, match=r"decoupled_depth must be an integer in \[0, 10\)"):
        _unet(decoupled_depth=10)
    with pytest.raises(UserError, match="decoupled_depth must be an integer"):
        _unet(decoupled_depth="7")


def test_unet_split_conditions_the_later_blocks_on_r():
    # the first k blocks see t, the rest r: moving r changes the output only through blocks >= k, so the
    # encoder's features (blocks 0-2) are unchanged when k = 3 and change when k = 2
    torch.manual_seed(2)
    z, t, y = torch.randn(3, 2, 8, 8), torch.rand(3), torch.tensor([0, 1, 2])
    for k, enc_moves in [(3, False), (2, True)]:
        net = _jiggle(_unet(decoupled_depth=k))
        seen: list = []
        hook = net.enc["4x4_block0"].register_forward_hook(
            lambda m, a, out, seen=seen: seen.append(out[0].clone()))
        a, b = net(z, t, 0.2 * t, y), net(z, t, 0.7 * t, y)
        hook.remove()
        assert not torch.allclose(a, b)
        assert torch.equal(seen[0], seen[1]) != enc_moves
