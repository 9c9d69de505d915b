"""Improved MeanFlow (iMF): the loss against a float64 transcription of its equations, the JVP tangent,
guidance as an input, option checks, and two short CPU training runs.

Measured on this machine (torch 2.13 CPU, one thread):

* checkerboard, TinyNet 3 x 128 (hand-written tangent mode), Adam 2e-3, batch 256, 1500 steps,
  uniform times (the MeanFlow protocol of test_learning_toy2d.py), ~11 s: iMF 1 step sliced W2
  0.145, energy distance 0.015 (MeanFlow 0.130 / 0.013, flow matching 1 step 0.867 / 0.630, fresh
  data 0.045 / 0.000 there);
* two class blobs at x = -1, +1 (std 0.35), mlp 2 x 64 with guidance_cond, Adam 1e-3, batch 256,
  1000 steps, ~15 s: mean x of 1-step class-1 samples 1.32, 1.81, 2.56, 3.46 and of class-0
  samples -0.84, -1.39, -2.04, -2.81 for omega = 1, 2, 4, 8.
"""

import pytest
import torch
from method_testnets import TinyNet

from meanflow.data import toy2d
from meanflow.errors import UserError
from meanflow.evaluation.toy_metrics import energy_distance, sliced_wasserstein
from meanflow.methods import ImprovedMeanFlow, build_method
from meanflow.networks import MLP

NC = 3  # classes of the tiny conditional nets; the null class id is NC


def _perturbed_mlp(num_classes=NC, guidance_cond=True, seed=0):
    torch.manual_seed(seed)
    net = MLP(dim=2, hidden=16, depth=2, num_classes=num_classes, guidance_cond=guidance_cond).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():  # zero-initialised biases would hide mistakes
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def _batch(b=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    x = torch.randn(b, 2, generator=g, dtype=d)
    e = torch.randn(b, 2, generator=g, dtype=d)
    t = 0.05 + 0.9 * torch.rand(b, generator=g, dtype=d)
    r = t * torch.rand(b, generator=g, dtype=d)
    r[: b // 2] = t[: b // 2]  # half the batch has r = t
    y = torch.randint(0, NC, (b,), generator=g)
    omega = 1 + 7 * torch.rand(b, generator=g, dtype=d)
    t_min = 0.5 * torch.rand(b, generator=g, dtype=d)
    t_max = 0.5 + 0.5 * torch.rand(b, generator=g, dtype=d)
    t_min[: b // 2], t_max[: b // 2] = 0.0, 1.0
    t_min[-1], t_max[-1] = 0.9, 0.95  # one r != t sample outside its interval (w_eff = 1)
    drop = torch.zeros(b, dtype=torch.bool)
    drop[[1, b // 2 + 1]] = True
    return x, e, t, r, y, omega, (t_min, t_max), drop


def _reference_loss(net, x, e, t, r, y, omega, interval, drop, *, conditional=True, p=1.0, c=0.01,
                    v_weight=1.0):
    """The iMF equations written out directly: separate calls, torch.func.jvp on (z, r, t)."""
    tb = t[:, None]
    z = (1 - tb) * x + tb * e
    v = e - x
    zero = torch.zeros_like(t)
    if conditional:
        t_min, t_max = interval
        w_eff = torch.where((t >= t_min) & (t <= t_max), omega, torch.ones_like(omega))
        full = lambda w: torch.stack([w, zero, torch.ones_like(t)], dim=1)  # noqa: E731
        with torch.no_grad():
            v_c = net(z, t, zero, y, guidance=full(w_eff))
            v_u = net(z, t, zero, torch.full_like(y, NC), guidance=full(torch.ones_like(t)))
        v_g = v + (1 - 1 / w_eff)[:, None] * (v_c - v_u)
        y_in = torch.where(drop, NC, y)
        v_g = torch.where(drop[:, None], v, v_g)
        kw = {"guidance": torch.stack([omega, t_min, t_max], dim=1)}
    else:
        with torch.no_grad():
            v_c = net(z, t, zero, None)
        v_g, y_in, kw = v, None, {}

    def u_fn(z_, r_, t_):
        return net(z_, t_, t_ - r_, y_in, **kw)

    u, dudt = torch.func.jvp(u_fn, (z, r, t), (v_c, torch.zeros_like(r), torch.ones_like(t)))
    compound = u + (t - r)[:, None] * dudt.detach()
    err_u = ((compound - v_g.detach()) ** 2).sum(1)
    loss = err_u / (err_u.detach() + c) ** p
    if v_weight:
        v_pred = net(z, t, zero, y_in, **kw)
        err_v = ((v_pred - v_g.detach()) ** 2).sum(1)
        loss = loss + v_weight * err_v / (err_v.detach() + c) ** p
    return loss.mean()


@pytest.mark.parametrize("conditional, v_weight, norm_p", [(True, 1.0, 1.0), (True, 0.0, 0.5),
                                                            (True, 0.7, 0.0), (False, 1.0, 1.0)])
def test_loss_and_gradients_equal_the_equations_in_float64(conditional, v_weight, norm_p):
    x, e, t, r, y, omega, interval, drop = _batch()
    net = _perturbed_mlp(num_classes=NC if conditional else 0, guidance_cond=conditional)
    m = ImprovedMeanFlow(num_classes=NC if conditional else 0, v_weight=v_weight, norm_p=norm_p)
    kw = dict(omega=omega, interval=interval, drop=drop) if conditional else {}
    out = m.loss(net, x, y if conditional else None, noise=e, t=t, r=r, **kw)
    ref = _reference_loss(net, x, e, t, r, y, omega, interval, drop, conditional=conditional, p=norm_p,
                          v_weight=v_weight)
    assert out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    params = list(net.parameters())
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    for a, b_ in zip(grads, ref_grads):
        if b_ is None:
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)
    assert set(out.metrics) >= {"loss", "loss_u", "u_v_mse", "frac_r_neq_t"}
    assert ("loss_v" in out.metrics) == (v_weight > 0)


class _VelocityNet(torch.nn.Module):
    """Output we control, ``A z + E[y] + s(h) + q(w)``, recording the tangents it is given.

    ``h``, the guidance scale and the label all change the output, so the tangent check below can
    tell the model's guided velocity ``net(z, t, 0 | y, w_eff, [0, 1])`` from any other call."""

    supports_tangents = True

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(2, 2, generator=g, dtype=torch.float64))
        self.emb = torch.nn.Parameter(torch.randn(NC + 1, 2, generator=g, dtype=torch.float64))
        self.tangents = []

    def forward(self, z, t, h, y=None, tangents=None, guidance=None):
        y = torch.full((z.shape[0],), NC) if y is None else y
        mix = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=z.dtype)
        out = z @ self.a.T + self.emb[y] + 3 * h[:, None] + 0.5 * guidance[:, :1] + guidance[:, 1:] @ mix
        if tangents is None:
            return out
        dz, dt, dh = tangents
        self.tangents.append((dz.clone(), dt.clone(), dh.clone()))
        return out, dz @ self.a.T.detach() + 3 * dh[:, None]


def test_jvp_tangent_is_the_models_own_guided_velocity():
    x, e, t, r, y, omega, interval, drop = _batch()
    net = _VelocityNet()
    m = ImprovedMeanFlow(num_classes=NC)
    m.loss(net, x, y, noise=e, t=t, r=r, omega=omega, interval=interval, drop=drop)
    assert len(net.tangents) == 1
    dz, dt, dh = net.tangents[0]
    b = x.shape[0]
    z = (1 - t[:, None]) * x + t[:, None] * e
    w_eff = torch.where((t >= interval[0]) & (t <= interval[1]), omega, torch.ones_like(omega))
    g_full = torch.stack([w_eff, torch.zeros_like(t), torch.ones_like(t)], dim=1)
    with torch.no_grad():
        v_model = net(z, t, torch.zeros_like(t), y, guidance=g_full)  # undropped labels, as official
    torch.testing.assert_close(dz[:b], v_model, rtol=0, atol=1e-14)
    assert (dz[:b] - (e - x)).abs().max() > 0.1  # not MeanFlow's tangent
    torch.testing.assert_close(dt[:b], torch.ones_like(t))  # (dt, dh) = (1, 1) on (z, t, h = t - r)
    torch.testing.assert_close(dh[:b], torch.ones_like(t))
    assert dz[b:].abs().max() == 0 and dt[b:].abs().max() == 0  # the h = 0 half (aux velocity) is unused


def test_unconditional_tangent_is_the_models_velocity():
    x, e, t, r, *_ = _batch()
    seen = []

    class Net(torch.nn.Module):
        supports_tangents = True

        def __init__(self):
            super().__init__()
            self.s = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

        def forward(self, z, t, h, y=None, tangents=None):
            out = self.s * z + h[:, None] + t[:, None] ** 2
            if tangents is None:
                return out
            dz, dt, dh = tangents
            seen.append(dz.clone())
            return out, self.s.detach() * dz + dh[:, None] + 2 * t[:, None] * dt[:, None]

    net = Net()
    ImprovedMeanFlow(v_weight=0.0).loss(net, x, noise=e, t=t, r=r)
    z = (1 - t[:, None]) * x + t[:, None] * e
    torch.testing.assert_close(seen[0], 0.3 * z + t[:, None] ** 2)


def test_sample_is_one_call_per_step_with_the_chosen_guidance():
    calls = []

    class Net(torch.nn.Module):
        def forward(self, z, t, h, y=None, guidance=None):
            calls.append((t.clone(), h.clone(), guidance.clone()))
            return torch.ones_like(z)

    m = ImprovedMeanFlow(num_classes=NC, sample_omega=3.0, sample_t_min=0.2, sample_t_max=0.7)
    e = torch.zeros(4, 2)
    out = m.sample(Net(), e, torch.zeros(4, dtype=torch.long), steps=2)
    torch.testing.assert_close(out, -torch.ones(4, 2))
    assert len(calls) == 2
    torch.testing.assert_close(calls[0][2], torch.tensor([[3.0, 0.2, 0.7]]).expand(4, 3))
    torch.testing.assert_close(calls[1][1], torch.full((4,), 0.5))
    calls.clear()
    m.sample(Net(), e, None, omega=5.0, interval=(0.0, 0.5))
    assert len(calls) == 1
    torch.testing.assert_close(calls[0][2], torch.tensor([[5.0, 0.0, 0.5]]).expand(4, 3))


def test_training_draws_follow_the_official_distributions():
    m = ImprovedMeanFlow(num_classes=NC)
    g = torch.Generator().manual_seed(0)
    w = m.sample_omega_train(200000, generator=g)
    assert float(w.min()) >= 1.0 and float(w.max()) <= 8.0
    # beta = 1: log w ~ U(0, log 8)
    assert abs(float(torch.log(w).mean()) - 0.5 * float(torch.log(torch.tensor(8.0)))) < 0.01
    wb = ImprovedMeanFlow(num_classes=NC, omega_beta=2.0).sample_omega_train(200000, generator=g)
    # density ~ w^-2 on [1, 8]: E[w] = log 8 / (1 - 1/8)
    assert abs(float(wb.mean()) - 2.0794415 / 0.875) < 0.02
    fm = torch.arange(10) < 5
    t_min, t_max = m.sample_interval_train(fm, generator=g)
    assert (t_min[:5] == 0).all() and (t_max[:5] == 1).all()
    assert (t_min[5:] <= 0.5).all() and (t_max[5:] >= 0.5).all()
    out = m.loss(_perturbed_mlp().float(), torch.randn(64, 2), torch.randint(0, NC, (64,)))
    assert float(out.metrics["frac_r_neq_t"]) == 0.5


@pytest.mark.parametrize("kwargs", [
    {"ratio": 1.5}, {"time_dist": "gauss"}, {"t_std": 0.0}, {"norm_p": -1.0}, {"norm_eps": 0.0},
    {"v_weight": -1.0}, {"omega_max": 0.5}, {"omega_max": float("inf")}, {"omega_beta": float("nan")},
    {"interval_split": 1.5}, {"class_dropout": 2.0}, {"num_classes": -1}, {"num_classes": 1.5},
    {"num_classes": 3, "sample_omega": 0.5}, {"sample_omega": 2.0},
    {"num_classes": 3, "sample_t_min": 0.8, "sample_t_max": 0.2}, {"sample_t_max": 1.5},
])
def test_bad_options_are_one_line_user_errors(kwargs):
    with pytest.raises(UserError) as err:
        build_method("imf", **kwargs)
    assert "\n" not in str(err.value)


def test_bad_inputs_are_one_line_user_errors():
    m = ImprovedMeanFlow(num_classes=NC)
    net = _perturbed_mlp().float()
    x, y = torch.randn(4, 2), torch.zeros(4, dtype=torch.long)
    g = torch.ones(4, 3)
    bad = [
        lambda: m.loss(net, x, None),
        lambda: m.loss(net, x, y, net_kwargs={"guidance": g}),
        lambda: m.loss(net, x, y, t=torch.full((4,), 0.2), r=torch.full((4,), 0.5)),
        lambda: m.loss(net, x, y, omega=torch.ones(3)),
        lambda: m.sample(net, x, y, omega=0.5),
        lambda: m.sample(net, x, y, interval=(0.7, 0.3)),
        lambda: ImprovedMeanFlow().sample(net, x, y, omega=2.0),
        lambda: m.loss(_perturbed_mlp(guidance_cond=False).float(), x, y),  # net without guidance_cond
    ]
    for call in bad:
        with pytest.raises(UserError) as err:
            call()
        assert "\n" not in str(err.value)


def _blobs(n, g):
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.35 * torch.randn(n, 2, generator=g)
    x[:, 0] += 2.0 * y - 1.0
    return x, y


@pytest.mark.slow
def test_guidance_scale_moves_samples_monotonically(one_thread):
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=64, depth=2, num_classes=2, guidance_cond=True)
    m = ImprovedMeanFlow(num_classes=2, time_dist="uniform")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(1000):
        x, y = _blobs(256, g)
        out = m.loss(net, x, y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    e = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    ones = torch.ones(2000, dtype=torch.long)
    omegas = (1.0, 2.0, 4.0, 8.0)
    pos = [float(m.sample(net, e, ones, omega=w)[:, 0].mean()) for w in omegas]
    neg = [float(m.sample(net, e, 1 - ones, omega=w)[:, 0].mean()) for w in omegas]
    msg = f"class-1 means {pos}, class-0 means {neg}"
    # omega = 1 lands near the class centres +-1; over 4 seeds x 2 row orders (equal gradients to
    # 1e-16, different float rounding) the means spread over 0.54..1.47 and -1.57..-0.84.
    assert abs(pos[0] - 1.0) < 0.7 and abs(neg[0] + 1.0) < 0.7, msg
    # stronger guidance pushes each class further from the other (measured steps >= 0.49)
    assert all(b - a > 0.2 for a, b in zip(pos, pos[1:])), msg
    assert all(a - b > 0.2 for a, b in zip(neg, neg[1:])), msg
    narrow = m.sample(net, e, ones, omega=8.0, interval=(0.4, 0.6))
    assert (narrow - m.sample(net, e, ones, omega=8.0)).abs().mean() > 0.05  # the interval is an input


@pytest.mark.slow
def test_imf_learns_a_one_step_map_on_the_checkerboard(one_thread):
    data = toy2d.sample("checkerboard", 50000, seed=0)
    held = toy2d.sample("checkerboard", 2000, seed=1)
    torch.manual_seed(0)
    net = TinyNet(shape=(2,), hidden=128, depth=3, tangent_mode=True)
    m = ImprovedMeanFlow(time_dist="uniform")
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
    assert sw < 0.22, sw   # measured 0.145 (flow matching 1 step: 0.867)
    assert ed < 0.04, ed   # measured 0.015 (flow matching 1 step: 0.630)
