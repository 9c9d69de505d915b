"""SoFlow: the loss and its gradient against a float64 transcription of the official formulas
(zlab-princeton/SoFlow@3b60d60, models.py `get_velocity_loss`, `get_consistency_loss`,
`get_cfg_decay_scale`, `get_middle_time`; train.py's split and weighting), the target as the
interval-splitting identity (α-Flow's discrete target with α = ρ), the shared dropout masks of the two
passes, the draws, the sampler and the options."""

import math

import pytest
import torch
import torch.nn.functional as F
from method_testnets import TinyNet
from torch import nn

from meanflow.errors import UserError
from meanflow.methods import build_method
from meanflow.methods.alphaflow import AlphaFlow
from meanflow.methods.base import Progress
from meanflow.methods.soflow import SoFlow, cfg_decay, rho_at

# ---------------------------------------------------------------- official formulas, transcribed


def _official_middle_time(t, s, now, total, init, end, method):
    if method == "Const":
        return t + (s - t) * end
    if method == "Linear":
        return t + (s - t) * (init + (end - init) * (now / total))
    if method == "Cosine":
        return t + (s - t) * (end + (init - end) * 0.5 * (1.0 + math.cos(math.pi * (now / total))))
    return t + (s - t) * (init * ((end / init) ** (now / total)))


def _official_decay(t, decay_time, k=0.025):
    if decay_time < 1.0:
        decay_t = ((1 - t) / (1 - decay_time)).clamp(min=0, max=1 - 1e-6)
        after = 1 - torch.exp(-k * (decay_t / (1 - decay_t)))
        return (t <= decay_time).double() + (t > decay_time).double() * after
    return torch.ones_like(t)


class _Official:
    """The official `Soflow` loss methods on a network of this project: NN(x, t, s, labels) is
    net(x, t, t - s, labels) (the DiT computes s = t - s), labels None -> the null class."""

    def __init__(self, net, num_classes):
        self.net, self.num_classes = net, num_classes

    def network(self, x, t, s, labels):
        t, s = t.flatten(), s.flatten()
        if labels is None:
            labels = torch.full((x.shape[0],), self.num_classes) if self.num_classes else None
        return self.net(x, t, t - s, labels)

    def predict_velocity(self, x_t, t, labels):  # Euler: a_grad_s = 0, b_grad_s = 1
        return 0.0 * x_t + 1.0 * self.network(x_t, t, t, labels)

    def velocity_loss(self, x, e, t, labels, cfg_mask, cfg_scale, decay_time, p, eps, mix_ratio):
        b = x.shape[0]
        tb = t.view(b, 1)
        x_t, v_t = (1 - tb) * x + tb * e, -x + e
        if labels is not None and cfg_scale > 1.0:
            labels_masked = torch.where(cfg_mask, self.num_classes, labels)
            v_pred = self.predict_velocity(x_t, t, labels_masked)
            with torch.no_grad():
                v_uncond = self.predict_velocity(x_t, t, None)
                d = _official_decay(tb, decay_time)
                v_guided = v_t + d * (cfg_scale - 1) * (v_t - v_uncond)
                v_guided = mix_ratio * v_guided + (1 - mix_ratio) * v_pred
                v_masked = torch.where(cfg_mask.view(-1, 1), v_t, v_guided)
            delta = (v_pred - v_masked).view(b, -1)
        else:
            delta = (self.predict_velocity(x_t, t, labels) - v_t).view(b, -1)
        w = 1.0 / (torch.ones(b, dtype=x.dtype) * (delta.pow(2).mean(dim=1) + eps).pow(p))
        return (w.detach() * delta.pow(2).mean(dim=1)).mean()

    def consistency_loss(self, x, e, t, l, s, labels, cfg_mask, cfg_scale, decay_time, p, eps, mix_ratio):
        b = x.shape[0]
        t, l, s = t.view(b, 1), l.view(b, 1), s.view(b, 1)
        x_t, v_t = (1 - t) * x + t * e, -x + e
        if labels is not None and cfg_scale > 1.0:
            with torch.no_grad():
                labels_masked = torch.where(cfg_mask, self.num_classes, labels)
                d = _official_decay(t, decay_time)
                v_uncond = self.predict_velocity(x_t, t, None)
                v_guided = v_t + d * (cfg_scale - 1) * (v_t - v_uncond)
                if mix_ratio != 1.0:
                    v_pred = self.predict_velocity(x_t, t, labels)
                    v_guided = mix_ratio * v_guided + (1 - mix_ratio) * v_pred
                v_masked = torch.where(cfg_mask.view(-1, 1), v_t, v_guided)
        else:
            labels_masked, v_masked = labels, v_t
        nn_t = self.network(x_t, t, s, labels_masked)
        f_t = 1.0 * x_t + (s - t) * nn_t
        with torch.no_grad():
            x_l = x_t + v_masked * (l - t)
            nn_l = self.network(x_l, l, s, labels_masked)
            f_l = 1.0 * x_l + (s - l) * nn_l
            dq = ((f_t - f_l) / (t - l)).view(b, -1)
            w = 1.0 / (dq.pow(2).mean(dim=1) + eps).pow(p).view(b, -1)
        sgn = torch.sign(s - t).flatten()
        return (sgn * (nn_t.view(b, -1) * (dq * w)).mean(dim=1)).mean(), dq.pow(2).mean()


def _official_loss(net, m: SoFlow, x, e, t, s, labels, cfg_mask, step, total):
    """train.py: the first n_fm rows flow matching, the rest consistency, weighted by their fractions."""
    off = _Official(net, m.num_classes)
    b = x.shape[0]
    n = int((s == t).sum())
    kw = dict(cfg_scale=m.cfg_scale, decay_time=m.cfg_decay_time, p=m.norm_p, eps=m.norm_eps,
              mix_ratio=m.mix_ratio)
    sched = {"const": "Const", "linear": "Linear", "cosine": "Cosine", "exponent": "Exponent"}[m.rho_schedule]

    def lab(a):
        return None if labels is None else labels[a]

    loss = x.new_zeros(())
    if n:
        fm = slice(0, n)
        loss = loss + off.velocity_loss(x[fm], e[fm], t[fm], lab(fm), cfg_mask[fm], **kw) * (n / b)
    if n == b:
        return loss, None
    c = slice(n, b)
    l = _official_middle_time(t[c], s[c], step, total, m.rho_start, m.rho_end, sched)  # noqa: E741
    l = torch.minimum(l, t[c] - 1e-4)  # noqa: E741
    con, con_mse = off.consistency_loss(x[c], e[c], t[c], l, s[c], lab(c), cfg_mask[c], **kw)
    return loss + con * ((b - n) / b), con_mse


# ---------------------------------------------------------------- tests


def _net(classes=0, seed=0):
    torch.manual_seed(seed)
    return TinyNet(shape=(2,), hidden=16, depth=2, num_classes=classes).double()


def _batch(b=12, n_fm=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 2, generator=g, dtype=torch.float64)
    e = torch.randn(b, 2, generator=g, dtype=torch.float64)
    t = 0.05 + 0.95 * torch.rand(b, generator=g, dtype=torch.float64)
    s = t * torch.rand(b, generator=g, dtype=torch.float64)
    s[:n_fm] = t[:n_fm]
    s[-1] = t[-1] - 1e-4  # a row where l = min(., t - 1e-4) clamps
    y = torch.randint(0, 3, (b,), generator=g)
    return x, e, t, s, y


CASES = {
    "cifar (uncond, p .75, eps 1e-3, rho 1 -> 3e-4)": dict(
        kw=dict(ratio_fm=0.0, norm_p=0.75, norm_eps=1e-3, rho_start=1.0, rho_end=3.125e-4, cfg_scale=1.0,
                class_dropout=0.0), classes=0, n_fm=0),
    "imagenet (guided, defaults)": dict(kw={}, classes=3, n_fm=4),
    "guided, mix 1, no decay, cosine": dict(
        kw=dict(mix_ratio=1.0, cfg_decay_time=1.0, rho_schedule="cosine", class_dropout=0.4), classes=3,
        n_fm=5),
    "uncond, p 0, linear": dict(kw=dict(norm_p=0.0, rho_schedule="linear", cfg_scale=1.0, class_dropout=0.0),
                                classes=0, n_fm=6),
    "guided, const, all flow matching": dict(kw=dict(rho_schedule="const", class_dropout=0.5), classes=3,
                                             n_fm=12),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient_equal_the_official_formula(case):
    spec = CASES[case]
    net, m = _net(spec["classes"]), SoFlow(num_classes=spec["classes"], **spec["kw"])
    x, e, t, s, y = _batch(n_fm=spec["n_fm"])
    if spec["n_fm"] == 12:
        s = t.clone()
    labels = y if spec["classes"] else None
    torch.manual_seed(3)  # the label-dropout mask is the first draw of the loss when noise, t, r are given
    mask = torch.rand(12) < m.class_dropout if m.guided(labels) else torch.zeros(12, dtype=torch.bool)
    torch.manual_seed(3)
    out = m.loss(net, x, labels, noise=e, t=t, r=s, progress=Progress(30, 100))
    got = torch.autograd.grad(out.loss, list(net.parameters()))
    ref, con_mse = _official_loss(net, m, x, e, t, s, labels, mask, 30, 100)
    want = torch.autograd.grad(ref, list(net.parameters()))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-14)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    if spec["n_fm"] < 12:
        assert out.metrics["con_mse"].item() == pytest.approx(con_mse.item(), rel=1e-8)
    assert out.metrics["frac_fm"].item() == pytest.approx(spec["n_fm"] / 12)
    if m.guided(labels):
        assert 0 < int(mask.sum()) < 12  # the cases exercise both kinds of rows


def test_rho_schedules_equal_the_official_middle_time():
    t, s = torch.tensor([0.9, 0.5], dtype=torch.float64), torch.tensor([0.1, 0.2], dtype=torch.float64)
    names = [("const", "Const"), ("linear", "Linear"), ("cosine", "Cosine"), ("exponent", "Exponent")]
    for ours, theirs in names:
        for step in (0, 1, 250, 999, 1000):
            rho = rho_at(step / 1000, start=0.1, end=0.002, schedule=ours)
            want = _official_middle_time(t, s, step, 1000, 0.1, 0.002, theirs)
            torch.testing.assert_close(t + (s - t) * rho, want, rtol=1e-13, atol=0.0)
    assert rho_at(0.0) == pytest.approx(0.1) and rho_at(1.0) == pytest.approx(0.002)
    cifar = SoFlow(rho_start=1.0, rho_end=3.125e-4)
    assert cifar.rho(Progress(400, 800)) == pytest.approx(math.sqrt(3.125e-4))


def test_guidance_decay_equals_the_official_one():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for decay_time in (0.8, 0.5, 1.0):
        want = _official_decay(t, decay_time)
        torch.testing.assert_close(cfg_decay(t, decay_time), want, rtol=1e-13, atol=0.0)
    d = cfg_decay(t, 0.8)
    assert bool((d[t <= 0.8] == 1).all()) and d[-1] == 0 and bool((d[1:] <= d[:-1]).all())


def test_target_is_the_interval_splitting_identity():
    """With p = 0 the consistency gradient is that of mean_i 1/(2ρ) mean_d ||u(z, s, t) - sg(u_tgt)||²,
    u_tgt = ρ ṽ + (1 - ρ) u(z_l, s, l): α-Flow's discrete target with α = ρ (no clamp of l: t - s >= 0.1
    here); and the logged mean q² is mean ||(u - u_tgt) / ρ||²."""
    net = _net()
    x, e, t, _, _ = _batch(n_fm=0)
    t = 0.15 + 0.85 * t
    s = (t - 0.1) * torch.rand(12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m = SoFlow(ratio_fm=0.0, norm_p=0.0, rho_schedule="const", rho_end=0.3, cfg_scale=1.0, class_dropout=0.0)
    out = m.loss(net, x, noise=e, t=t, r=s, progress=Progress(0, 1))
    got = torch.autograd.grad(out.loss, list(net.parameters()))
    z, v = (1 - t[:, None]) * x + t[:, None] * e, e - x
    tgt = AlphaFlow().discrete_target(net, z, t, s, v, 0.3, None)
    u = net(z, t, t - s, None)
    ref = ((u - tgt).square().mean(dim=1) / (2 * 0.3)).mean()
    for a, b in zip(got, torch.autograd.grad(ref, list(net.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    want_mse = ((u - tgt) / 0.3).square().mean()
    assert out.metrics["con_mse"].item() == pytest.approx(want_mse.item(), rel=1e-9)


class _MaskNet(nn.Module):
    """u = dropout(1) * θ, whatever (z, t, h): two passes agree exactly when they draw the same mask.
    Records each call's mask."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.ones(2, dtype=torch.float64))
        self.masks = []

    def forward(self, z, t, h, y=None):
        mask = F.dropout(torch.ones_like(z), 0.5, self.training)
        self.masks.append(mask)
        return mask * self.theta


def test_the_two_passes_share_dropout_masks():
    """NN_l replays the RNG state NN_t started from: same masks, so with a network that only depends on its
    dropout mask NN_l = NN_t and q = ṽ - NN_l exactly (without the replay q would carry (t - s)/(t - l) times
    the mask difference); the RNG goes on as after one pass."""
    net = _MaskNet()
    x, e, t, s, _ = _batch(b=64, n_fm=0)
    m = SoFlow(ratio_fm=0.0, norm_p=0.0, cfg_scale=1.0, class_dropout=0.0)
    torch.manual_seed(11)
    out = m.loss(net, x, noise=e, t=t, r=s, progress=Progress(5, 10))
    after = torch.rand(3)
    a, b = net.masks
    assert torch.equal(a, b) and 0 < int((a == 0).sum()) < a.numel()
    v = e - x
    want = (v - b * net.theta).square().mean().item()
    assert out.metrics["con_mse"].item() == pytest.approx(want, rel=1e-12)
    torch.manual_seed(11)
    F.dropout(torch.ones(64, 2, dtype=torch.float64), 0.5, True)
    assert torch.equal(torch.rand(3), after)


def test_a_tiny_net_with_dropout_matches_its_replayed_pass():
    """The same replay with a real MLP with dropout: the no-grad pass at the same inputs equals the first."""
    from meanflow.methods.consistency import rng_state, set_rng_state

    torch.manual_seed(0)
    net = TinyNet(shape=(2,), hidden=32, depth=3, dropout=0.3).double().train()
    z, t = torch.randn(16, 2, dtype=torch.float64), torch.rand(16, dtype=torch.float64)
    state = rng_state(z.device)
    first = net(z, t, t / 2)
    set_rng_state(state, z.device)
    with torch.no_grad():
        second = net(z, t, t / 2)
    third = net(z, t, t / 2)
    assert torch.equal(first.detach(), second) and not torch.equal(second, third.detach())


def test_draws_split_and_gaps():
    m = SoFlow(ratio_fm=0.75)
    t, r = m.sample_t_r(4000)
    assert t.shape == r.shape == (4000,) and t.dtype == torch.float32
    assert torch.equal(t[:3000], r[:3000])
    assert bool((t[3000:] >= 1e-4).all()) and bool((r[3000:] <= t[3000:] - 1e-4 + 1e-7).all())
    logit = lambda a: torch.log(a / (1 - a))  # noqa: E731
    assert logit(t[:3000]).mean().item() == pytest.approx(-0.2, abs=0.1)
    assert logit(t[3000:]).mean().item() == pytest.approx(0.2, abs=0.15)
    assert SoFlow(ratio_fm=0.0).sample_t_r(8)[0].shape == (8,)


def test_guidance_is_inert_on_unconditional_batches():
    """Official behaviour: no labels (or num_classes = 0) -> ṽ = v, no dropout draw, whatever cfg_scale."""
    net = _net()
    x, e, t, s, _ = _batch()
    prog = Progress(1, 4)
    torch.manual_seed(0)
    a = SoFlow().loss(net, x, noise=e, t=t, r=s, progress=prog)
    b = SoFlow(cfg_scale=1.0, class_dropout=0.0).loss(net, x, noise=e, t=t, r=s, progress=prog)
    assert a.loss.item() == b.loss.item()


def test_drawn_batch_runs_and_is_reproducible():
    net = _net(classes=3)
    x, y = torch.randn(16, 2, dtype=torch.float64), torch.randint(0, 3, (16,))
    m = SoFlow(num_classes=3)
    torch.manual_seed(4)
    a = m.loss(net, x, y, progress=Progress(0, 10))
    torch.manual_seed(4)
    b = m.loss(net, x, y, progress=Progress(0, 10))
    assert a.loss.item() == b.loss.item() and a.metrics["frac_fm"].item() == 0.75
    a.loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_samplers():
    net = _net()
    e = torch.randn(5, 2, dtype=torch.float64)
    ones = torch.ones(5, dtype=torch.float64)
    one = SoFlow().sample(net, e, steps=1)
    torch.testing.assert_close(one, e - net(e, ones, ones, None))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    got = SoFlow().sample(net, e, steps=2, generator=g1)
    assert got.shape == (5, 2)
    half = 0.5 * ones
    x0 = e - net(e, ones, ones, None)
    z = 0.5 * x0 + 0.5 * torch.randn(5, 2, generator=g2, dtype=torch.float64)
    torch.testing.assert_close(got, z - 0.5 * net(z, half, half, None))
    again = SoFlow().sample(net, e, steps=2, generator=torch.Generator().manual_seed(3))
    other = SoFlow().sample(net, e, steps=2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, again) and not torch.equal(got, other)
    traj = SoFlow(sampler="trajectory").sample(net, e, steps=2)
    mid = e - 0.5 * net(e, ones, half, None)
    torch.testing.assert_close(traj, mid - 0.5 * net(mid, half, half, None))
    imgs = SoFlow().sample(TinyNet(shape=(1, 4, 4)), torch.randn(3, 1, 4, 4), steps=3,
                           generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (3, 1, 4, 4)


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio_fm": 1.5}, "ratio_fm"),
    ({"norm_eps": 0.0}, "norm_eps"),
    ({"rho_end": 0.0}, "rho_start and rho_end"),
    ({"rho_schedule": "step"}, "rho_schedule"),
    ({"cfg_scale": 0.5}, "cfg_scale must be"),
    ({"cfg_scale": 3.0, "class_dropout": 0.0}, "go together"),
    ({"cfg_scale": 1.0, "class_dropout": 0.1}, "go together"),
    ({"mix_ratio": 1.5}, "mix_ratio"),
    ({"cfg_decay_time": 0.0}, "cfg_decay_time"),
    ({"num_classes": -1}, "num_classes"),
    ({"sampler": "euler"}, "sampler"),
    ({"t_std": 0.0}, "std"),
])
def test_options_are_checked(kwargs, match):
    with pytest.raises(UserError, match=match) as err:
        SoFlow(**kwargs)
    assert "\n" not in str(err.value)


def test_loss_refusals_and_registry():
    m = build_method("soflow", ratio_fm=0.5)
    assert isinstance(m, SoFlow) and m.needs == frozenset({"progress"})
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(UserError, match="progress"):
        m.loss(_net(), x)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    with pytest.raises(UserError, match="t - r >= 0.0001"):
        m.loss(_net(), x, t=t, r=t - 1e-6, progress=Progress(0, 1))
    with pytest.raises(UserError, match="shape"):
        m.loss(_net(), x, t=t[:3], progress=Progress(0, 1))
