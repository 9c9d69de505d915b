"""pixel MeanFlow (pMF): u from x_hat, the loss and its gradients against a float64 transcription of the
official formulas (``Lyy-iiis/pMF@75f6073`` ``pmf.py:373-462``), the label-drop prefix, the training
draws, guidance at sampling time, and the option checks."""

from __future__ import annotations

import math

import pytest
import torch

from meanflow.errors import UserError
from meanflow.methods import PixelMeanFlow, build_method
from meanflow.methods import pmf_perceptual as P
from meanflow.networks import PMFDiT

NC = 3  # classes; the null class id is NC
D64 = torch.float64


def perturb_(net, std=0.1, seed=0):
    """Noise on every parameter, so that zero-initialised layers hide no mistake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def tiny_net(num_classes=NC, guidance_cond=True, aux_head_depth=1, seed=0):
    torch.manual_seed(seed)
    net = PMFDiT(input_size=8, in_channels=1, patch_size=2, hidden_size=16, depth=2, num_heads=2,
                 num_classes=num_classes, bottleneck=4, aux_head_depth=aux_head_depth, frequency_dim=8,
                 guidance_cond=guidance_cond)
    return perturb_(net.double(), std=0.1, seed=seed)


def _batch(b=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 8, 8, generator=g, dtype=D64).clamp(-1, 1)
    e = torch.randn(b, 1, 8, 8, generator=g, dtype=D64)
    t = 0.1 + 0.85 * torch.rand(b, generator=g, dtype=D64)
    r = t * torch.rand(b, generator=g, dtype=D64)
    r[: b // 2] = t[: b // 2]  # the official layout: the first half has r = t
    t[-2], r[-2] = 0.03, 0.01  # below the clip: c(t) = 0.05, c'(t) = 0
    t[1] = 0.9  # above perceptual_max_t
    y = torch.randint(0, NC, (b,), generator=g)
    omega = 1 + 7 * torch.rand(b, generator=g, dtype=D64)
    t_min = 0.5 * torch.rand(b, generator=g, dtype=D64)
    t_max = 0.5 + 0.5 * torch.rand(b, generator=g, dtype=D64)
    t_min[: b // 2], t_max[: b // 2] = 0.0, 1.0
    t_min[-1], t_max[-1] = 0.96, 0.99  # an r != t row outside its interval (w_eff = 1)
    drop = torch.arange(b) < 2  # a prefix, as the official cond_drop
    return x, e, t, r, y, omega, (t_min, t_max), drop


def _fake_lpips(a, b, path, sha):
    return (a - b).square().mean(dim=(1, 2, 3))


def _fake_convnext(a, b, path, sha):
    return (a.mean(dim=(2, 3)) - b.mean(dim=(2, 3))).square().sum(1) + (a - b).abs().mean(dim=(1, 2, 3))


def _reference(net, x, e, t, r, y, omega, interval, drop, *, conditional=True, noise_scale=1.0, v_weight=1.0,
               lam=(0.0, 0.0), crop_seed=7, size=16):
    """pmf.py:373-462 and models/pmfDiT.py:373-376 written out: the network returns (u, v) like the
    official one, separate calls per head, torch.func.jvp on (z, t, r)."""
    c = lambda s: s.clamp(0.05, 1.0)[:, None, None, None]  # noqa: E731
    e = noise_scale * e
    T = t[:, None, None, None]
    z = (1 - T) * x + T * e
    v_t = (z - x) / c(t)

    def net_uv(z_, t_, h_, w, a, b, labels, head):
        kw = {"guidance": torch.stack([w, a, b], 1)} if conditional else {}
        return (z_ - net(z_, t_, h_, labels, head=head, **kw)) / c(t_)

    zero, one = torch.zeros_like(t), torch.ones_like(t)
    t_min, t_max = interval
    with torch.no_grad():
        if conditional:
            v_c = net_uv(z, t, zero, omega, zero, one, y, "v")
            v_u = net_uv(z, t, zero, one, zero, one, torch.full_like(y, NC), "v")
            v_g_fm = v_t + (1 - 1 / omega)[:, None, None, None] * (v_c - v_u)
            w = torch.where((t >= t_min) & (t <= t_max), omega, one)
            v_c = net_uv(z, t, zero, w, zero, one, y, "v")
            v_g = v_t + (1 - 1 / w)[:, None, None, None] * (v_c - v_u)
            v_g = torch.where((r == t)[:, None, None, None], v_g_fm, v_g)
            labels = torch.where(drop, NC, y)
            v_g = torch.where(drop[:, None, None, None], v_t, v_g)
        else:
            v_c, v_g, labels = net_uv(z, t, zero, one, zero, one, None, "v"), v_t, None
    u, dudt = torch.func.jvp(lambda z_, t_, r_: net_uv(z_, t_, t_ - r_, omega, t_min, t_max, labels, "u"),
                             (z, t, r), (v_c, one, zero))
    v = net_uv(z, t, t - r, omega, t_min, t_max, labels, "v")
    V = u + (t - r)[:, None, None, None] * dudt.detach()
    adp = lambda err: err / (err.detach() + 0.01)  # noqa: E731
    loss = adp(((V - v_g) ** 2).sum((1, 2, 3))) + v_weight * adp(((v - v_g) ** 2).sum((1, 2, 3)))
    if any(lam):
        idx = (t < 0.8).nonzero().flatten()
        a, b = P.paired_random_resized_crop((z - T * u)[idx], x[idx], size,
                                            generator=torch.Generator().manual_seed(crop_seed))
        aux = lam[0] * adp(_fake_lpips(a, b, None, None)) + lam[1] * adp(_fake_convnext(a, b, None, None))
        loss = loss + torch.zeros_like(t).index_add(0, idx, aux)
    return loss.mean()


@pytest.fixture
def weight_files(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "lpips_distance", _fake_lpips)
    monkeypatch.setattr(P, "convnext_distance", _fake_convnext)
    paths = tmp_path / "lpips.safetensors", tmp_path / "convnext.safetensors"
    for p in paths:
        p.write_bytes(b"not read: the distances are replaced")
    return tuple(str(p) for p in paths)


@pytest.mark.parametrize("conditional,noise_scale,v_weight,perceptual", [
    (True, 1.0, 1.0, True), (True, 2.0, 0.5, False), (False, 1.0, 1.0, True)])
def test_loss_and_gradients_equal_the_official_formulas_in_float64(conditional, noise_scale, v_weight,
                                                                   perceptual, weight_files):
    x, e, t, r, y, omega, interval, drop = _batch()
    net = tiny_net(num_classes=NC if conditional else 0, guidance_cond=conditional)
    lam = (0.4, 0.1) if perceptual else (0.0, 0.0)
    m = PixelMeanFlow(num_classes=NC if conditional else 0, noise_scale=noise_scale, v_weight=v_weight,
                      lpips_weight=lam[0], lpips_weights=weight_files[0], convnext_weight=lam[1],
                      convnext_weights=weight_files[1], perceptual_size=16)
    kw = dict(omega=omega, interval=interval, drop=drop) if conditional else {}
    out = m.loss(net, x, y if conditional else None, noise=e, t=t, r=r,
                 generator=torch.Generator().manual_seed(7), **kw)
    if not conditional:
        omega, interval = torch.ones_like(t), (torch.zeros_like(t), torch.ones_like(t))
    ref = _reference(net, x, e, t, r, y, omega, interval, drop, conditional=conditional,
                     noise_scale=noise_scale, v_weight=v_weight, lam=lam)
    assert out.loss.dtype == D64
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    params = [p for p in net.parameters()]
    for a, b in zip(torch.autograd.grad(out.loss, params, allow_unused=True),
                    torch.autograd.grad(ref, params, allow_unused=True)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert {"loss", "loss_u", "loss_v", "u_v_mse", "frac_r_neq_t"} <= set(out.metrics)
    assert ("lpips" in out.metrics) == perceptual


def test_same_loss_without_tangent_mode_and_without_partial_tangents():
    x, e, t, r, y, omega, interval, drop = _batch()
    net = tiny_net()
    m = PixelMeanFlow(num_classes=NC)
    kw = dict(noise=e, t=t, r=r, omega=omega, interval=interval, drop=drop)
    ref = m.loss(net, x, y, **kw).loss

    class Plain(torch.nn.Module):  # the same weights behind torch.func.jvp (no tangent mode)
        heads = net.heads

        def __init__(self):
            super().__init__()
            self.inner = net

        def forward(self, *a, **k):
            return self.inner(*a, **k)

    torch.testing.assert_close(m.loss(Plain(), x, y, **kw).loss, ref, rtol=1e-12, atol=1e-12)
    net.supports_partial_tangents = False
    torch.testing.assert_close(m.loss(net, x, y, **kw).loss, ref, rtol=1e-12, atol=1e-12)


class _FixedImage(torch.nn.Module):
    """``x_hat = A`` whatever the input; records the calls."""

    def __init__(self, image):
        super().__init__()
        self.image, self.calls = image, []

    def forward(self, z, t, h, y=None, **kw):
        self.calls.append((t.clone(), h.clone(), y, kw))
        return self.image.expand_as(z)


def test_u_from_x_hat_and_one_step_sampling_returns_x_hat():
    a = torch.linspace(-1, 1, 64, dtype=D64).reshape(1, 1, 8, 8)
    net = _FixedImage(a)
    m = PixelMeanFlow(noise_scale=2.0)
    z = torch.randn(3, 1, 8, 8, dtype=D64)
    t = torch.tensor([0.5, 0.02, 1.0], dtype=D64)
    u = m.velocity(net)(z, t, t, None)
    torch.testing.assert_close(u, (z - a) / torch.tensor([0.5, 0.05, 1.0], dtype=D64).view(3, 1, 1, 1))
    e = torch.randn(3, 1, 8, 8, dtype=D64)
    torch.testing.assert_close(m.sample(net, e), a.expand(3, -1, -1, -1), rtol=0, atol=1e-15)
    # two steps from z_1 = 2 e: z_.5 = z_1 - .5 (z_1 - A) / 1, then z_0 = z_.5 - .5 (z_.5 - A) / .5 = A
    torch.testing.assert_close(m.sample(net, e, steps=2), a.expand(3, -1, -1, -1), rtol=0, atol=1e-14)
    t_, h_, _, _ = net.calls[-1]
    assert torch.equal(t_, torch.full((3,), 0.5, dtype=D64)) and torch.equal(h_, t_)


def test_sampling_guidance_is_a_network_input():
    net = _FixedImage(torch.zeros(1, 1, 8, 8))
    m = PixelMeanFlow(num_classes=NC, sample_omega=8.5, sample_t_min=0.1, sample_t_max=0.7)
    m.sample(net, torch.randn(2, 1, 8, 8), torch.tensor([0, 2]))
    torch.testing.assert_close(net.calls[-1][3]["guidance"], torch.tensor([[8.5, 0.1, 0.7]] * 2))
    assert "head" not in net.calls[-1][3]
    m.sample(net, torch.randn(2, 1, 8, 8), torch.tensor([0, 2]), omega=3.0, interval=(0.2, 0.6))
    torch.testing.assert_close(net.calls[-1][3]["guidance"], torch.tensor([[3.0, 0.2, 0.6]] * 2))
    with pytest.raises(UserError, match="omega"):
        m.sample(net, torch.randn(2, 1, 8, 8), None, omega=0.5)


def test_label_drop_is_a_contiguous_prefix_of_binomial_length():
    m = PixelMeanFlow(num_classes=NC)
    torch.manual_seed(0)
    masks = torch.stack([m.drop_prefix(64) for _ in range(2000)])
    k = masks.sum(1)
    assert torch.equal(masks, torch.arange(64) < k[:, None])  # always rows 0..k-1
    assert abs(k.double().mean().item() - 6.4) < 0.15 and abs(k.double().var().item() - 5.76) < 0.6
    # In the loss, the null label reaches the network on exactly those rows: r = t rows (trap 3).
    net = tiny_net()
    net.supports_partial_tangents = False  # keep the row order
    seen = []
    hook = net.register_forward_pre_hook(lambda mod, args, kw: seen.append((args[3], kw.get("head"))),
                                         with_kwargs=True)
    x = torch.randn(32, 1, 8, 8, dtype=D64)
    y = torch.randint(0, NC, (32,))
    torch.manual_seed(1)
    PixelMeanFlow(num_classes=NC, class_dropout=0.3).loss(net, x, y)
    hook.remove()
    nulls = next(lab for lab, head in seen if head == "uv") == NC
    assert 0 < nulls.sum() < 16 and torch.equal(nulls, torch.arange(32) < nulls.sum())


def test_training_draws_follow_the_official_distributions():
    m = PixelMeanFlow(num_classes=NC)
    torch.manual_seed(0)
    t, r = m.draw_times(1000, dtype=D64)
    assert torch.equal(r[:500], t[:500]) and bool((r[500:] < t[500:]).all())
    both = torch.cat([t[:500], t[500:], r[500:]]).logit()
    assert abs(both.mean().item() - 0.8) < 0.06 and abs(both.std().item() - 0.8) < 0.06
    t, r = m.draw_times(7)
    assert torch.equal(r[:3], t[:3]) and bool((r[3:] < t[3:]).all())  # int(3.5) = 3 rows with r = t
    w = m.sample_omega_train(200000, dtype=D64)
    assert 1 <= w.min() and w.max() <= 8
    assert abs(w.mean().item() - 7 / math.log(8)) < 0.02  # density 1 / (w ln 8) on [1, 8]
    w2 = PixelMeanFlow(num_classes=NC, omega_beta=2.0).sample_omega_train(200000, dtype=D64)
    assert abs(w2.mean().item() - math.log(8) / (1 - 1 / 8)) < 0.02  # density ~ w^-2 (L configs)
    fm = torch.arange(1000) < 500
    a, b = m.sample_interval_train(fm, dtype=D64)
    assert bool((a[:500] == 0).all() and (b[:500] == 1).all())
    assert 0 <= a[500:].min() and a[500:].max() <= 0.5 <= b[500:].min() and b[500:].max() <= 1


def test_uniform_share_redraws_that_share_of_rows_uniformly():
    # LN(5, 0.8) keeps t and r above 0.9 (sigmoid(5 - 5 x 0.8) = 0.73 only at -5 sd); a redrawn row has
    # t = max(U, U') < 0.9 with probability 0.81 on the r != t half, so about 0.81 q of those rows land there
    n = 200000
    for share in [0.0, 0.1, 1.0]:
        m = PixelMeanFlow(num_classes=NC, t_mean=5.0, uniform_share=share)
        torch.manual_seed(0)
        t, r = m.draw_times(n, dtype=D64)
        low = (t[n // 2:] < 0.9).double().mean().item()
        assert abs(low - 0.81 * share) < 0.006, (share, low)
        assert torch.equal(r[: n // 2], t[: n // 2]) and bool((r <= t).all())
    with pytest.raises(UserError, match="uniform_share"):
        PixelMeanFlow(num_classes=NC, uniform_share=1.5)


def test_defaults_are_the_official_ones_except_the_perceptual_weights():
    m = PixelMeanFlow()
    assert (m.t_mean, m.t_std, m.ratio, m.omega_max, m.omega_beta) == (0.8, 0.8, 0.5, 8.0, 1.0)
    assert m.class_dropout == 0.1
    assert (m.norm_p, m.norm_eps, m.v_weight, m.min_t, m.perceptual_max_t) == (1.0, 0.01, 1.0, 0.05, 0.8)
    assert (m.lpips_weight, m.convnext_weight, m.perceptual_size, m.default_steps) == (0.0, 0.0, 224, 1)
    assert build_method("pmf", num_classes=NC).net_inputs == ("guidance",)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lpips_weight=0.4), "lpips_weight=0.4 needs lpips_weights"),
    (dict(convnext_weight=0.1), "convnext_weight=0.1 needs convnext_weights"),
    (dict(convnext_weight=0.1, convnext_weights="/nonexistent/c.safetensors"), "not found"),
    (dict(lpips_weight=-1.0), "lpips_weight must be"),
    (dict(convnext_sha256="xyz"), "sha256 must be"),
    (dict(noise_scale=0.0), "noise_scale"), (dict(min_t=0.0), "min_t"), (dict(aux_head="yes"), "aux_head"),
    (dict(perceptual_size=8), "perceptual_size"), (dict(perceptual_max_t=1.5), "perceptual_max_t")])
def test_bad_options_are_one_line_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match) as err:
        build_method("pmf", **kwargs)
    assert "\n" not in str(err.value)


def test_cli_refuses_a_perceptual_weight_without_its_file_in_one_line(capsys):
    from meanflow.cli import main

    code = main(["train", "--dry-run", "--set", "method.name=pmf", "--set", "method.kwargs.lpips_weight=0.4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "lpips_weights" in err[0]


def test_bad_inputs_are_one_line_user_errors():
    m = PixelMeanFlow(num_classes=NC)
    net = tiny_net()
    x, e, t, r, y, *_ = _batch()
    for call in (lambda: m.loss(net, x, None), lambda: m.loss(net, x, y, net_kwargs={"head": "u"}),
                 lambda: m.sample(net, e, y, net_kwargs={"head": "v"}),
                 lambda: PixelMeanFlow(num_classes=NC, aux_head=True).loss(tiny_net(aux_head_depth=0), x, y),
                 lambda: PixelMeanFlow().loss(torch.nn.Identity(), x)):
        with pytest.raises(UserError) as err:
            call()
        assert "\n" not in str(err.value)


def test_aux_head_false_reads_v_at_h_zero_on_any_network():
    from meanflow.networks import MLP

    torch.manual_seed(0)
    net = perturb_(MLP(dim=2, hidden=16, depth=2, num_classes=NC, guidance_cond=True).double(), std=0.1)
    m = PixelMeanFlow(num_classes=NC, aux_head=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 2, generator=g, dtype=D64), torch.randint(0, NC, (8,), generator=g)
    out = m.loss(net, x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss) and "loss_v" in out.metrics
    assert m.sample(net, torch.randn(4, 2, dtype=D64), y[:4], omega=2.0).shape == (4, 2)
