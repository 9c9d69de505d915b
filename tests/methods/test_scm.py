"""sCT / sCD: the TrigFlow change of variables, the tangent against a float64 transcription of the
reference formula and against finite differences of f along the path, warm-up, normalisation, the
loss value, the proposal, the samplers and the teacher's guided direction."""

import math

import pytest
import torch
from method_testnets import TinyNet

from meanflow.errors import UserError
from meanflow.methods import build_method
from meanflow.methods.base import Progress
from meanflow.methods.scm import truncated_log_normal
from meanflow.methods.trigflow import (
    tau_from_theta,
    theta_from_sigma,
    theta_from_tau,
    trig_denoise,
    trig_F,
    trig_F_and_tangent,
    trig_scale,
)
from meanflow.networks import build_network

SD = 0.7


def _net(log_variance=False, num_classes=0, dtype=torch.float64):
    torch.manual_seed(0)
    net = build_network("mlp", dim=2, hidden=32, depth=2, num_classes=num_classes, log_variance=log_variance)
    if log_variance:  # a non-trivial head
        torch.nn.init.normal_(net.logvar.linear.weight, std=0.3)
    return net.to(dtype)


def _batch(b=6):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(b, 2, generator=g, dtype=torch.float64)
    e = torch.randn(b, 2, generator=g, dtype=torch.float64)
    theta = 0.05 + 1.45 * torch.rand(b, generator=g, dtype=torch.float64)
    return x0, e, theta


def _col(a):
    return a[:, None]


def test_time_and_point_maps_agree_in_both_conventions():
    net = _net()
    x0, e, th = _batch()
    tau = tau_from_theta(th, SD)
    torch.testing.assert_close(theta_from_tau(tau, SD), th)
    sigma = SD * torch.tan(th)
    torch.testing.assert_close(theta_from_sigma(sigma, SD), th)
    torch.testing.assert_close(sigma, tau / (1 - tau))  # both are the EDM noise level
    xt = _col(torch.cos(th)) * x0 + _col(torch.sin(th)) * SD * e
    zt = _col(1 - tau) * x0 + _col(tau) * e
    torch.testing.assert_close(xt / _col(trig_scale(th, SD)), zt)
    # The denoised estimate is the same point: f = cos x - sd sin F equals z - tau v.
    v = net(zt, tau, torch.zeros_like(tau), None)
    f = _col(torch.cos(th)) * xt - SD * _col(torch.sin(th)) * trig_F(net, xt, th, None, SD)
    torch.testing.assert_close(f, zt - _col(tau) * v)
    torch.testing.assert_close(trig_denoise(net, xt, th, None, SD), zt - _col(tau) * v)


def _reference_g(net, xt, th, dx, r):
    """float64 transcription of FastGen's sCM tangent: F from an x0-predicting denoiser by SNR matching,
    torch.func.jvp along (cos sin dx, cos sin), g = -cos^2 (sd F - dx) - r (cos sin x + sd F_jvp)."""

    def F_ref(x, t):
        tau = SD * torch.sin(t) / (torch.cos(t) + SD * torch.sin(t))
        z = x / _col(torch.cos(t) + SD * torch.sin(t))
        x0_pred = z - _col(tau) * net(z, tau, torch.zeros_like(tau), None)
        return (_col(torch.cos(t)) * x - x0_pred) / (SD * _col(torch.sin(t)))  # x0_to_flow / sigma_d

    vt = torch.cos(th) * torch.sin(th)
    F, F_jvp = torch.func.jvp(F_ref, (xt, th), (_col(vt) * dx, vt))
    return -_col(torch.cos(th) ** 2) * (SD * F - dx) - r * (_col(vt) * xt + SD * F_jvp)


@pytest.mark.parametrize("r", [1.0, 0.3])
def test_tangent_matches_the_reference_formula_in_float64(r):
    net = _net()
    x0, e, th = _batch()
    xt = _col(torch.cos(th)) * x0 + _col(torch.sin(th)) * SD * e
    dx = _col(torch.cos(th)) * SD * e - _col(torch.sin(th)) * x0
    m = build_method("sct", sigma_data=SD, tangent_norm="none")
    f, df = trig_F_and_tangent(net, xt, th, None, dx, SD)
    torch.testing.assert_close(m.tangent(f, df, xt, dx, th, r), _reference_g(net, xt, th, dx, r))


def test_tangent_is_cos_times_the_finite_difference_of_f_along_the_path():
    net = _net()
    x0, e, th = _batch()

    def f_at(t):
        xt = _col(torch.cos(t)) * x0 + _col(torch.sin(t)) * SD * e
        return trig_denoise(net, xt, t, None, SD)

    eps = 1e-5
    fd = (f_at(th + eps) - f_at(th - eps)) / (2 * eps)
    xt = _col(torch.cos(th)) * x0 + _col(torch.sin(th)) * SD * e
    dx = _col(torch.cos(th)) * SD * e - _col(torch.sin(th)) * x0
    m = build_method("sct", sigma_data=SD, tangent_norm="none")
    g = m.tangent(*trig_F_and_tangent(net, xt, th, None, dx, SD), xt, dx, th, 1.0)
    torch.testing.assert_close(g, _col(torch.cos(th)) * fd, atol=1e-8, rtol=1e-6)


def test_normalisation_and_warm_up():
    x0, e, th = _batch()
    g = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    f = torch.zeros_like(g)
    dx = g / torch.cos(th).square().reshape(-1, 1, 1, 1)  # makes the first term g, f = df = 0 ...
    xt = torch.zeros_like(g)  # ... and the second term 0
    raw = build_method("sct", tangent_norm="none").tangent(f, f, xt, dx, th, 0.5)
    torch.testing.assert_close(raw, g)
    rms = build_method("sct", tangent_norm="rms", norm_const=0.1).tangent(f, f, xt, dx, th, 0.5)
    norm = g.flatten(1).norm(dim=1) / math.sqrt(48)
    torch.testing.assert_close(rms, g / (norm.reshape(-1, 1, 1, 1) + 0.1))
    l2 = build_method("sct", tangent_norm="l2", norm_const=0.1).tangent(f, f, xt, dx, th, 0.5)
    torch.testing.assert_close(l2, g / (g.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) + 0.1))
    # warm-up: r = step / warmup_steps, capped at 1 (metric)
    m = build_method("sct", sigma_data=SD, warmup_steps=100)
    net = _net(log_variance=True, dtype=torch.float32)
    x = torch.randn(8, 2)
    for step, want in ((0, 0.0), (25, 0.25), (100, 1.0), (500, 1.0)):
        assert float(m.loss(net, x, progress=Progress(step, 1000)).metrics["warmup"]) == want


@pytest.mark.parametrize("adaptive", [True, False])
def test_loss_value_and_gradient_match_a_float64_transcription(adaptive):
    net = _net(log_variance=adaptive)
    x0, e, th = _batch()
    sigma = SD * torch.tan(th)
    tau = sigma / (1 + sigma)
    m = build_method("sct", sigma_data=SD, warmup_steps=40, adaptive_weight=adaptive)
    out = m.loss(net, x0, noise=e, t=tau, progress=Progress(10, 100))
    grads = torch.autograd.grad(out.loss, list(net.parameters()), allow_unused=True)

    xt = _col(torch.cos(th)) * x0 + _col(torch.sin(th)) * SD * e
    dx = _col(torch.cos(th)) * SD * e - _col(torch.sin(th)) * x0
    g = _reference_g(net, xt, th, dx, 0.25).detach()
    g = g / (_col(g.norm(dim=1) / math.sqrt(2)) + 0.1)
    F = trig_F(net, xt, th, None, SD)
    err = (F - F.detach() - g).square().mean(dim=1)
    lv = net.logvar(tau, torch.zeros_like(tau)) if adaptive else torch.zeros_like(tau)
    want = (err / sigma * torch.exp(-lv) + lv).mean()
    torch.testing.assert_close(out.loss, want)
    want_grads = torch.autograd.grad(want, list(net.parameters()), allow_unused=True)
    for a, b in zip(grads, want_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_proposal_is_a_truncated_log_normal():
    s = truncated_log_normal(20000, -1.0, 1.4, 0.002, 80.0, generator=torch.Generator().manual_seed(0))
    assert s.min() >= 0.002 and s.max() <= 80.0
    assert abs(float(s.log().mean()) + 1.0) < 0.05 and abs(float(s.log().std()) - 1.4) < 0.05
    tight = truncated_log_normal(5000, -1.0, 1.4, 0.1, 0.5)
    assert tight.min() >= 0.1 and tight.max() <= 0.5


def test_samplers():
    net = _net(dtype=torch.float32)
    m = build_method("sct", sigma_data=SD)
    e = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    tau_max = 80.0 / 81.0
    one = m.sample(net, e, steps=1)
    z = tau_max * e
    tau = torch.full((16,), tau_max)
    torch.testing.assert_close(one, z - tau_max * net(z, tau, torch.zeros_like(tau), None))
    grid = m.sample_grid(2, None, "cpu")
    torch.testing.assert_close(grid, torch.tensor([tau_max, 0.821 / 1.821, 0.0], dtype=torch.float64))
    two_a = m.sample(net, e, steps=2, generator=torch.Generator().manual_seed(5))
    two_b = m.sample(net, e, steps=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(two_a, two_b) and not torch.equal(two_a, one)
    assert m.sample_grid(4, None, "cpu").numel() == 5
    with pytest.raises(UserError):
        m.sample_grid(2, torch.tensor([1.0, 0.995, 0.0]), "cpu")


def test_scd_follows_the_guided_teacher():
    teacher = _net(num_classes=3)
    x0, e, th = _batch()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    xt = _col(torch.cos(th)) * x0 + _col(torch.sin(th)) * SD * e
    m = build_method("scd", sigma_data=SD, guidance=2.5, num_classes=3)
    dx = m.path_velocity(x0, SD * e, xt, th, y, None, teacher)
    c = SD * trig_F(teacher, xt, th, y, SD)
    u = SD * trig_F(teacher, xt, th, torch.full_like(y, 3), SD)
    torch.testing.assert_close(dx, c + 1.5 * (c - u))
    # the guided direction is the path of the guided velocity v_u + w (v_c - v_u)
    tau = tau_from_theta(th, SD)
    z = xt / _col(trig_scale(th, SD))
    zero = torch.zeros_like(tau)
    vg = teacher(z, tau, zero, torch.full_like(y, 3)) + 2.5 * (teacher(z, tau, zero, y)
                                                             - teacher(z, tau, zero, torch.full_like(y, 3)))
    torch.testing.assert_close(dx, SD * trig_F(teacher, xt, th, y, SD, velocity=vg))
    with pytest.raises(UserError, match="teacher"):
        m.loss(_net(log_variance=True, num_classes=3), x0, y, progress=Progress(0, 10))


@pytest.mark.parametrize("kwargs", [{"sigma_data": 0}, {"p_std": -1}, {"sigma_min": 90.0},
                                    {"warmup_steps": -1}, {"tangent_norm": "max"}, {"norm_const": 0},
                                    {"sample_sigma_mid": 100.0}])
def test_bad_options_are_one_line_errors(kwargs):
    with pytest.raises(UserError):
        build_method("sct", **kwargs)


def test_scd_options_and_missing_head():
    with pytest.raises(UserError, match="guidance"):
        build_method("scd", guidance=2.0)
    with pytest.raises(UserError, match="log-variance head"):
        build_method("sct").loss(TinyNet(), torch.randn(4, 2), progress=Progress(0, 1))
    out = build_method("sct", adaptive_weight=False).loss(TinyNet(tangent_mode=True), torch.randn(4, 2),
                                                          progress=Progress(0, 1))
    assert torch.isfinite(out.loss)


def test_the_builder_gives_each_network_its_log_variance_head():
    from meanflow.training.build import build_net
    from meanflow.training.presets import resolve_config

    for preset, shape in (("mnist", (1, 28, 28)), ("toy-2d", (2,))):
        cfg = resolve_config(preset, overrides=["method.name=sct"])
        net = build_net(cfg, shape, 10 if preset == "mnist" else 0, build_method("sct"))
        lv = net.logvar(torch.rand(3), torch.zeros(3)).detach()
        assert float(lv.abs().max()) == 0.0
    cfg = resolve_config("toy-2d", overrides=["method.name=sct", "network.kwargs.log_variance=false"])
    with pytest.raises(UserError, match="log_variance"):
        build_net(cfg, (2,), 0, build_method("sct"))
    cfg = resolve_config("toy-2d", overrides=["method.name=sct", "method.kwargs.adaptive_weight=false"])
    assert build_net(cfg, (2,), 0, build_method("sct", adaptive_weight=False)).logvar is None
