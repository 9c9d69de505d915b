"""Shortcut models: draws, bootstrap targets, gradients and sampler by hand, then a short training run.

Learning test: checkerboard, TinyNet (3 x 128), Adam 2e-3, batch 256, 2500 steps with a real
target network (``TargetNetwork``, updated after every step); samples from the online network, 2000
of them against 2000 held-out points. The reference decay 0.999 is meant for runs of 10^5-10^6
steps: after 1500-2000 steps its target still lags so far that 1-step samples were no better than
the raw noise (sliced W2 0.16 vs 0.20), so the run uses ``target_ema=0.99``; every other option is
the default. Measured on this machine (torch 2.13 CPU, one thread, 20-25 s of CPU; seeds 1-4 change
the initialisation and the batches):

    sample                                          sliced W2              mean |x_1 - x_128|
    shortcut 1 step (seed 0; seeds 1-4)             0.085 (0.089-0.115)    0.103 (0.094-0.104)
    shortcut 128 steps                              0.075 (0.086-0.117)    -
    raw noise, no network                           0.201                  -
    fresh data (noise floor)                        0.026                  -
    controls trained the same way, 1 step:
      flow matching (FlowMatching, uniform t)       0.920                  1.23
      bootstrap_fraction = 0 (no self-consistency)  0.914                  1.45
      target = s_1 only (no second half step)       0.829                  1.10
      z' = z + d s_1 (wrong sign)                   0.433                  0.65
      s_2 at t + d (wrong time)                     0.567                  0.76
      half steps queried at 2d                      1.92                   2.6

The sliced distance of raw Gaussian noise to the checkerboard is only 0.20 (both have zero mean and
unit per-coordinate spread), so the 1-step threshold is set against the noise as well as in absolute
terms, and the agreement of 1-step with 128-step samples from the same noise checks the
self-consistency directly; any of the broken controls above fails both.
"""

import math

import pytest
import torch
from method_testnets import SpyNet, TinyNet
from torch import nn

from meanflow.data import toy2d
from meanflow.errors import UserError
from meanflow.evaluation.toy_metrics import sliced_wasserstein
from meanflow.methods.base import Progress
from meanflow.methods.shortcut import ShortcutModel
from meanflow.training.target import TargetNetwork

M = 128
LEVELS = [2.0**-k for k in range(1, 8)]  # d = 1/2 ... 1/128


class AffineNet(nn.Module):
    """``out = a z (1 + t) + b h`` (+ ``y``): simple enough to compute every target by hand."""

    def __init__(self, a=0.5, b=2.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a), dtype=torch.float64))
        self.b = float(b)
        self.calls = []

    def forward(self, z, t, h, y=None, **kw):
        self.calls.append({"t": t.detach().clone(), "h": h.detach().clone(), "y": y, "kw": kw,
                           "n": z.shape[0]})
        out = self.a * z * (1 + t)[:, None] + self.b * h[:, None]
        if y is not None:
            out = out + y[:, None].to(z.dtype)
        return out


def _batch(b=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, generator=g, dtype=dtype), torch.randn(b, 2, generator=g, dtype=dtype)


# ---------------------------------------------------------------------------- options


@pytest.mark.parametrize("kw", [
    dict(max_steps=96), dict(max_steps=1), dict(max_steps=0), dict(max_steps=2.5),
    dict(bootstrap_fraction=-0.1), dict(bootstrap_fraction=1.5), dict(fm_d="tiny"), dict(fm_time="logit"),
    dict(target_source="teacher"), dict(target_ema=1.5), dict(target_clip=0.0), dict(target_clip=-1.0),
    dict(class_dropout=0.1), dict(class_dropout=2.0, num_classes=3), dict(num_classes=-1),
])
def test_bad_options_are_user_errors(kw):
    with pytest.raises(UserError):
        ShortcutModel(**kw)


def test_defaults_and_needs_follow_target_source():
    m = ShortcutModel()
    assert (m.max_steps, m.bootstrap_fraction, m.fm_d, m.fm_time) == (128, 0.25, "zero", "uniform")
    assert (m.target_ema, m.target_clip, m.class_dropout, m.num_classes) == (0.999, 4.0, 0.0, 0)
    assert m.needs == frozenset({"target"}) and ShortcutModel.default_steps == 1
    assert m.target_decay(Progress(10, 100)) == 0.999
    assert ShortcutModel(target_source="online").needs == frozenset()
    assert ShortcutModel.needs == frozenset({"target"})  # on the class (method listings): the default's
    assert ShortcutModel(target_ema=0.9).target_decay(Progress(0, 1)) == 0.9


def test_target_source_target_requires_the_target_network():
    x, _ = _batch()
    with pytest.raises(UserError, match="target"):
        ShortcutModel().loss(AffineNet(), x)


# ---------------------------------------------------------------------------- draws


def test_bootstrap_draws_are_powers_of_two_on_the_grid():
    m = ShortcutModel()
    t, d = m.sample_bootstrap(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert set(d.unique().tolist()) == set(LEVELS)
    counts = torch.stack([(d == v).sum() for v in LEVELS]).double()
    assert counts.min() > 0.9 * 20000 / 7 and counts.max() < 1.1 * 20000 / 7  # uniform over levels
    cells = t / (2 * d)
    assert torch.equal(cells, cells.round()) and bool((cells >= 1).all())
    assert bool((t - 2 * d >= 0).all()) and bool((t <= 1).all())
    for v in LEVELS:  # both ends of every grid are reached
        tv = t[d == v]
        assert math.isclose(tv.min().item(), 2 * v) and tv.max().item() == 1.0


def test_loss_rows_fraction_and_network_inputs():
    x, _ = _batch(b=64)
    online, tgt = AffineNet(), AffineNet()
    out = ShortcutModel().loss(online, x, target=tgt)
    assert out.metrics["frac_bootstrap"].item() == 16 / 64
    (call,) = online.calls
    h = call["h"]
    assert torch.equal(h[16:], torch.zeros(48, dtype=h.dtype))  # flow matching at d = 0 (paper)
    two_d = h[:16]
    assert set(two_d.tolist()) <= {2 * v for v in LEVELS}
    t = call["t"]
    assert torch.equal((t[:16] / two_d), (t[:16] / two_d).round()) and bool((t[:16] >= two_d).all())
    first, second = tgt.calls  # two half steps on the 16 bootstrap rows only
    assert first["n"] == second["n"] == 16
    d = two_d / 2
    torch.testing.assert_close(first["t"], t[:16])
    torch.testing.assert_close(second["t"], t[:16] - d)
    expect_h = torch.where(d == 1 / M, torch.zeros_like(d), d)  # finest half step queried at d = 0
    torch.testing.assert_close(first["h"], expect_h)
    torch.testing.assert_close(second["h"], expect_h)


def test_smallest_d_option_and_grid_times():
    x, _ = _batch(b=512)
    online = AffineNet()
    m = ShortcutModel(fm_d="smallest", fm_time="grid", target_source="online")
    t_sc = torch.tensor([1 / 64, 0.5, 1.0] + [0.3] * 509, dtype=torch.float64)
    r_sc = torch.tensor([0.0, 0.5 - 1 / 64, 0.0] + [0.3] * 509, dtype=torch.float64)
    m.loss(online, x, t=t_sc, r=r_sc)
    first, _, main = online.calls  # the two target forwards come first
    assert torch.equal(main["h"][3:], torch.full((509,), 1 / M, dtype=torch.float64))
    assert torch.equal(first["h"][:2], torch.full((2,), 1 / M, dtype=torch.float64))  # d = 1/M stays 1/M
    online.calls.clear()
    m.loss(online, x)
    t = online.calls[-1]["t"][128:]
    assert torch.equal(t * M, (t * M).round()) and t.min() >= 1 / M and t.max() <= 1
    online.calls.clear()
    ShortcutModel(target_source="online").loss(online, x)
    t = online.calls[-1]["t"][128:]
    assert not torch.equal(t * M, (t * M).round())  # continuous U(0, 1) by default


# ---------------------------------------------------------------------------- known answers


def test_bootstrap_target_is_the_average_of_two_half_steps():
    z, _ = _batch(b=4)
    t = torch.tensor([1.0, 0.5, 0.25, 1 / 64], dtype=torch.float64)
    d = torch.tensor([0.5, 0.25, 1 / 16, 1 / 128], dtype=torch.float64)
    net = AffineNet(a=0.5, b=2.0)
    got = ShortcutModel(target_clip=None).bootstrap_target(net, z, t, d)
    h = torch.where(d == 1 / 128, 0.0, d)[:, None]
    s1 = 0.5 * z * (1 + t)[:, None] + 2.0 * h
    z_mid = z - d[:, None] * s1
    s2 = 0.5 * z_mid * (1 + t - d)[:, None] + 2.0 * h
    torch.testing.assert_close(got, (s1 + s2) / 2)
    assert not got.requires_grad


def test_loss_known_answer_with_overrides():
    x, e = _batch(b=4)
    t = torch.tensor([1.0, 0.75, 0.5, 0.3], dtype=torch.float64)
    r = torch.tensor([0.0, 0.25, 0.5, 0.3], dtype=torch.float64)  # two bootstrap rows, two fm rows
    online, tgt = AffineNet(a=0.7, b=1.0), AffineNet(a=0.2, b=-1.0)
    m = ShortcutModel(target_clip=None)
    out = m.loss(online, x, noise=e, t=t, r=r, target=tgt)
    z = (1 - t)[:, None] * x + t[:, None] * e
    goal = e - x
    sc = m.bootstrap_target(tgt, z[:2], t[:2], (t - r)[:2] / 2)
    goal = torch.cat([sc, goal[2:]])
    h = torch.tensor([1.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    pred = 0.7 * z * (1 + t)[:, None] + h[:, None]
    err = (pred - goal).square().sum(1)
    torch.testing.assert_close(out.loss, err.mean())
    torch.testing.assert_close(out.metrics["sc_loss"], err[:2].mean())
    torch.testing.assert_close(out.metrics["fm_loss"], err[2:].mean())
    assert all(v.ndim == 0 and not v.requires_grad for v in out.metrics.values())


def test_target_clipping_applies_to_bootstrap_targets_only():
    z, _ = _batch(b=3)
    t = torch.ones(3, dtype=torch.float64)
    d = torch.full((3,), 0.25, dtype=torch.float64)
    big = AffineNet(a=0.0, b=40.0)  # outputs 40 d = 10
    four = torch.full((3, 2), 4.0, dtype=torch.float64)
    assert torch.equal(ShortcutModel().bootstrap_target(big, z, t, d), four)
    assert torch.equal(ShortcutModel(target_clip=2.5).bootstrap_target(big, z, t, d).abs().max(),
                       torch.tensor(2.5, dtype=torch.float64))
    torch.testing.assert_close(ShortcutModel(target_clip=None).bootstrap_target(big, z, t, d),
                               torch.full((3, 2), 10.0, dtype=torch.float64))
    x = torch.full((2, 2), -10.0, dtype=torch.float64)  # flow-matching target e - x is about 10
    out = ShortcutModel(target_source="online").loss(AffineNet(a=0.0, b=0.0), x, noise=torch.zeros_like(x),
                                                     t=torch.full((2,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(out.loss, torch.tensor(200.0, dtype=torch.float64))  # not clipped


def test_t_override_alone_means_flow_matching_and_bad_pairs_are_rejected():
    x, e = _batch(b=4)
    m = ShortcutModel(target_source="online")
    out = m.loss(AffineNet(), x, t=torch.full((4,), 0.5, dtype=torch.float64))
    assert out.metrics["frac_bootstrap"].item() == 0.0 and out.metrics["sc_loss"].item() == 0.0
    t = torch.full((4,), 0.5, dtype=torch.float64)
    for r in (t - 0.3, t + 0.1, t - 1 / 128, t - 1.0):  # not a power of two / r > t / 2d < 2/M / r < 0
        with pytest.raises(UserError):
            m.loss(AffineNet(), x, t=t, r=r)
    with pytest.raises(UserError, match="noise"):
        m.loss(AffineNet(), x, noise=e[:2])
    with pytest.raises(UserError, match="t must"):
        m.loss(AffineNet(), x, t=t[:3])


# ---------------------------------------------------------------------------- gradients


def test_target_network_gives_the_targets_and_gets_no_gradient():
    torch.manual_seed(0)
    net = TinyNet(hidden=16)
    tn = TargetNetwork(net)
    spy = SpyNet(scale=0.3)
    x = torch.randn(32, 2)
    out = ShortcutModel().loss(net, x, target=spy)
    assert len(spy.calls) == 2 and all(c[0].shape == (8,) for c in spy.calls)
    out = ShortcutModel().loss(net, x, target=tn.net)
    out.loss.backward()
    assert all(p.grad is None for p in tn.net.parameters())
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("source", ["online", "target"])
def test_gradient_flows_only_through_the_2d_prediction_and_flow_matching(source):
    torch.manual_seed(0)
    net = TinyNet(hidden=16).double()
    tgt = net if source == "target" else None  # same weights as a separate target: same gradient
    x, e = _batch(b=16)
    m = ShortcutModel(target_source=source)
    t = torch.tensor([1.0, 0.5, 0.75, 1 / 64] + [0.4] * 12, dtype=torch.float64)
    r = torch.tensor([0.0, 0.0, 0.5, 0.0] + [0.4] * 12, dtype=torch.float64)
    out = m.loss(net, x, noise=e, t=t, r=r, target=tgt)
    g = torch.autograd.grad(out.loss, list(net.parameters()))

    z = (1 - t)[:, None] * x + t[:, None] * e
    d = (t - r) / 2
    boot = d > 0
    goal = (e - x).clone()
    goal[boot] = m.bootstrap_target(net, z[boot], t[boot], d[boot])
    h = torch.where(boot, 2 * d, 0.0)
    manual = (net(z, t, h) - goal).square().sum(1).mean()
    torch.testing.assert_close(out.loss, manual)
    for a, b in zip(g, torch.autograd.grad(manual, list(net.parameters()))):
        torch.testing.assert_close(a, b)

    # the check is sensitive: a target that kept its graph would change the gradient
    s1 = net(z[boot], t[boot], d[boot])
    s2 = net(z[boot] - d[boot][:, None] * s1, t[boot] - d[boot], d[boot])
    goal_g = (e - x).clone()
    goal_g[boot] = ((s1 + s2) / 2).clamp(-4, 4)
    leaky = (net(z, t, h) - goal_g).square().sum(1).mean()
    g_leaky = torch.autograd.grad(leaky, list(net.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(g, g_leaky))


# ---------------------------------------------------------------------------- labels and kwargs


def test_class_dropout_reaches_every_call():
    x, _ = _batch(b=8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    net = AffineNet()
    ShortcutModel(target_source="online", num_classes=3, class_dropout=1.0).loss(net, x, y)
    assert len(net.calls) == 3
    assert all(bool((c["y"] == 3).all()) for c in net.calls)
    net.calls.clear()
    ShortcutModel(target_source="online", num_classes=3).loss(net, x, y)
    assert torch.equal(net.calls[-1]["y"], y) and torch.equal(net.calls[0]["y"], y[:2])


def test_net_kwargs_reach_every_call_cut_to_its_rows():
    x, _ = _batch(b=8)
    extra = torch.randn(8, 3)
    net = AffineNet()
    m = ShortcutModel(target_source="online")
    m.loss(net, x, net_kwargs={"extra": extra, "flag": True})
    assert len(net.calls) == 3
    assert torch.equal(net.calls[0]["kw"]["extra"], extra[:2])
    assert torch.equal(net.calls[1]["kw"]["extra"], extra[:2])
    assert net.calls[2]["kw"]["extra"] is extra
    assert all(c["kw"]["flag"] is True for c in net.calls)
    net.calls.clear()
    m.sample(net, torch.randn(8, 2, dtype=torch.float64), steps=2, net_kwargs={"extra": extra})
    assert len(net.calls) == 2 and all(c["kw"]["extra"] is extra for c in net.calls)


# ---------------------------------------------------------------------------- sampling


def test_one_step_sample_by_hand():
    torch.manual_seed(0)
    net = TinyNet(hidden=16)
    e = torch.randn(5, 2)
    got = ShortcutModel().sample(net, e, steps=1)
    ones = torch.ones(5)
    torch.testing.assert_close(got, e - net(e, ones, ones))


def test_four_step_sample_is_the_manual_loop():
    torch.manual_seed(0)
    net = TinyNet(hidden=16)
    e = torch.randn(5, 2)
    got = ShortcutModel().sample(net, e, steps=4)
    z = e
    for t in (1.0, 0.75, 0.5, 0.25):
        z = z - 0.25 * net(z, torch.full((5,), t), torch.full((5,), 0.25))
    torch.testing.assert_close(got, z)


@pytest.mark.parametrize("fm_d,h", [("zero", 0.0), ("smallest", 1 / M)])
def test_finest_sampler_queries_the_flow_matching_input(fm_d, h):
    spy = SpyNet(scale=0.0)
    ShortcutModel(fm_d=fm_d).sample(spy, torch.randn(3, 2), steps=M)
    assert len(spy.calls) == M
    assert all(bool((c[1] == h).all()) for c in spy.calls)
    assert spy.calls[0][0][0].item() == 1.0 and spy.calls[-1][0][0].item() == 1 / M


@pytest.mark.parametrize("steps", [0, 3, 6, 256, 1.5, -2])
def test_steps_must_be_a_power_of_two_up_to_max_steps(steps):
    with pytest.raises(UserError, match="steps"):
        ShortcutModel().sample(SpyNet(), torch.randn(2, 2), steps=steps)


def test_schedule_is_rejected_and_small_max_steps_caps_steps():
    with pytest.raises(UserError, match="schedule"):
        ShortcutModel().sample(SpyNet(), torch.randn(2, 2), schedule=torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(UserError, match="max_steps"):
        ShortcutModel(max_steps=8).sample(SpyNet(), torch.randn(2, 2), steps=16)
    assert ShortcutModel(max_steps=8).sample(SpyNet(), torch.randn(2, 2), steps=8).shape == (2, 2)


# ---------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_shortcut_learns_one_step_checkerboard(one_thread):
    steps, batch = 2500, 256
    data = toy2d.sample("checkerboard", 50000, seed=0)
    held = toy2d.sample("checkerboard", 2000, seed=1)
    method = ShortcutModel(target_ema=0.99)
    torch.manual_seed(0)
    net = TinyNet(shape=(2,), hidden=128, depth=3)
    tn = TargetNetwork(net)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        x = data[torch.randint(0, len(data), (batch,), generator=g)]
        out = method.loss(net, x, target=tn.net)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        tn.update(net, method.target_decay(Progress(step, steps)))

    e = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    one, fine = method.sample(net, e, steps=1), method.sample(net, e, steps=M)
    sw1, sw128, sw_noise = (sliced_wasserstein(s, held) for s in (one, fine, e))
    gap = (one - fine).norm(dim=1).mean().item()
    msg = f"sliced W2 1-step {sw1:.3f}, 128-step {sw128:.3f}, noise {sw_noise:.3f}; |x1 - x128| {gap:.3f}"
    assert sw1 < 0.15, msg                  # measured 0.085 (seeds 1-4: up to 0.115)
    assert sw1 < 0.75 * sw_noise, msg       # noise 0.201
    assert sw128 < 0.15, msg                # measured 0.075
    assert gap < 0.3, msg                   # measured 0.103; broken targets 0.65 and more
