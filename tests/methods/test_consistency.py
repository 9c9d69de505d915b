"""Shared consistency-model pieces: Karras grid, sigma <-> t, boundary scalings, metrics, sampler."""

import math

import pytest
import torch
from method_testnets import SpyNet, TinyNet

from meanflow.errors import UserError
from meanflow.methods.consistency import (
    ConsistencyModel,
    consistency_fn,
    distance,
    karras_sigmas,
    scalings,
    sigma_to_t,
    t_to_sigma,
)
from meanflow.methods.consistency_distillation import ConsistencyDistillation
from meanflow.methods.consistency_training import ConsistencyTraining
from meanflow.methods.improved_ct import ImprovedConsistencyTraining

CLASSES = [ConsistencyTraining, ImprovedConsistencyTraining, ConsistencyDistillation]


def test_karras_grid_endpoints_and_interior():
    s = karras_sigmas(40, 0.002, 80.0, 7.0)
    assert s.dtype == torch.float64 and s.shape == (40,)
    assert float(s[0]) == 0.002 and float(s[-1]) == 80.0
    assert bool((s[1:] > s[:-1]).all())
    # rho = 2 on [1, 16]: sqrt ends 1 and 4, thirds 2 and 3 -> 4 and 9; halves 2.5 -> 6.25.
    torch.testing.assert_close(karras_sigmas(4, 1.0, 16.0, 2.0), torch.tensor([1.0, 4.0, 9.0, 16.0]).double())
    torch.testing.assert_close(karras_sigmas(3, 1.0, 16.0, 2.0)[1], torch.tensor(6.25).double())
    # The EDM grid's midpoint: 0.002^(1/7) = 0.411560, 80^(1/7) = 1.870122, mean 1.140841, ^7 = 2.515219.
    assert float(karras_sigmas(3, 0.002, 80.0, 7.0)[1]) == pytest.approx(2.515219, rel=1e-6)
    with pytest.raises(UserError):
        karras_sigmas(1, 0.002, 80.0, 7.0)


def test_sigma_t_round_trip():
    assert float(sigma_to_t(torch.tensor(1.0))) == 0.5
    assert float(t_to_sigma(torch.tensor(0.5))) == 1.0
    assert float(sigma_to_t(torch.tensor(80.0))) == pytest.approx(80 / 81)
    sig = karras_sigmas(50, 0.002, 80.0, 7.0)
    torch.testing.assert_close(t_to_sigma(sigma_to_t(sig)), sig)
    t = torch.linspace(0.01, 0.99, 25, dtype=torch.float64)
    torch.testing.assert_close(sigma_to_t(t_to_sigma(t)), t)
    # The same noisy point: x_sigma = x + sigma e equals z_t / (1 - t) with z_t = (1 - t) x + t e.
    x, e, tt = torch.randn(4), torch.randn(4), torch.tensor(0.3)
    z_t = (1 - tt) * x + tt * e
    torch.testing.assert_close(x + t_to_sigma(tt) * e, z_t / (1 - tt))


def test_scalings_by_hand():
    # sigma = 1, sigma_data = 0.5, sigma_min = 0.002:
    # c_skip = 0.25 / (0.998^2 + 0.25) = 0.25 / 1.246004 = 0.200641
    # c_out = 0.998 * 0.5 / sqrt(1.25) = 0.446319,  c_in = 1 / sqrt(1.25) = 0.894427
    c_skip, c_out, c_in = scalings(torch.tensor(1.0, dtype=torch.float64), 0.5, 0.002)
    assert float(c_skip) == pytest.approx(0.200641, rel=1e-5)
    assert float(c_out) == pytest.approx(0.446319, rel=1e-5)
    assert float(c_in) == pytest.approx(0.894427, rel=1e-5)
    c_skip, c_out, _ = scalings(torch.full((3,), 0.002), 0.5, 0.002)
    assert torch.equal(c_skip, torch.ones(3)) and torch.equal(c_out, torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundary_condition_is_exact_for_any_network(dtype):
    net = TinyNet(shape=(3,), hidden=16).to(dtype)
    x = torch.randn(6, 3, dtype=dtype) * 5
    f = consistency_fn(net, x, torch.full((6,), 0.002, dtype=dtype), None, 0.5, 0.002)
    assert torch.equal(f, x)
    # Through a method, with sigma the grid's (float64) first level.
    m = ConsistencyTraining()
    assert torch.equal(m.denoise(net, x, m.sigmas(10)[:1].expand(6)), x)


def test_consistency_fn_calls_net_with_c_in_x_t_of_sigma_and_h_zero():
    net = SpyNet(scale=0.7)
    x, sigma = torch.randn(4, 2), torch.tensor([0.5, 1.0, 3.0, 80.0])
    f = consistency_fn(net, x, sigma, None, 0.5, 0.002)
    c_skip, c_out, c_in = scalings(sigma, 0.5, 0.002)
    torch.testing.assert_close(f, c_skip[:, None] * x + c_out[:, None] * 0.7 * c_in[:, None] * x)
    (t_seen, h_seen, _), = net.calls
    torch.testing.assert_close(t_seen, sigma / (1 + sigma))
    assert torch.all(h_seen == 0)


def test_distances_by_hand():
    a, b = torch.tensor([[3.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    torch.testing.assert_close(distance(a, b, "l2"), torch.tensor([25.0, 0.0]))
    torch.testing.assert_close(distance(a, b, "l1"), torch.tensor([7.0, 0.0]))
    # sqrt(25 + 1.5^2) - 1.5 = 5.220153 - 1.5 = 3.720153
    torch.testing.assert_close(distance(a, b, "pseudo_huber", 1.5), torch.tensor([3.720153, 0.0]))
    # Default c = 0.00054 sqrt(d): d = 3 * 32 * 32 = 3072 -> 0.00054 * 55.4256 = 0.0299298.
    u, v = torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32)
    v[0, 0, 0, 0] = 1.0
    c = 0.00054 * math.sqrt(3072)
    assert c == pytest.approx(0.02993, abs=1e-5)
    torch.testing.assert_close(distance(u, v, "pseudo_huber"), torch.tensor([math.sqrt(1 + c * c) - c, 0.0]))
    with pytest.raises(UserError):
        distance(a, b, "lpips")


def test_one_step_sample_by_hand():
    torch.manual_seed(1)
    net = TinyNet(shape=(2,), hidden=16)
    e = torch.randn(5, 2)
    m = ConsistencyTraining(sigma_data=0.8)
    x = m.sample(net, e)
    s = torch.full((5,), 80.0)
    c_skip, c_out, c_in = (c[:, None] for c in scalings(s, 0.8, 0.002))
    with torch.no_grad():
        expected = c_skip * 80 * e + c_out * net(c_in * 80 * e, s / 81, torch.zeros(5))
    torch.testing.assert_close(x, expected)
    assert not x.requires_grad


def test_two_step_sample_by_hand_and_default_midpoint():
    """F = 0 makes f(x, sigma) = c_skip(sigma) x:
    x1 = c_skip(80) 80 e, x2 = c_skip(tau) (x1 + sqrt(tau^2 - sigma_min^2) z)."""
    net = SpyNet(scale=0.0)
    e = torch.randn(3, 2, dtype=torch.float64)
    m = ImprovedConsistencyTraining()
    x = m.sample(net, e, steps=2, generator=torch.Generator().manual_seed(5))
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cs = lambda s: scalings(torch.tensor(s, dtype=torch.float64), 0.5, 0.002)[0]  # noqa: E731
    x1 = cs(80.0) * 80 * e
    torch.testing.assert_close(x, cs(0.821) * (x1 + math.sqrt(0.821**2 - 0.002**2) * z))
    assert [float(c[0][0]) for c in net.calls] == pytest.approx([80 / 81, 0.821 / 1.821])


def test_schedule_gives_the_renoising_levels():
    net = SpyNet(scale=0.0)
    m = ConsistencyDistillation()
    m.sample(net, torch.randn(2, 3), schedule=torch.tensor([1.0, 0.75, 0.5, 0.0]))
    # t = 0.75 -> sigma 3, t = 0.5 -> sigma 1: the network sees t(sigma) again.
    assert [float(c[0][0]) for c in net.calls] == pytest.approx([80 / 81, 0.75, 0.5])
    net.calls.clear()
    m.sample(net, torch.randn(2, 3), steps=4)  # uniform t grid: 0.75, 0.5, 0.25
    assert [float(c[0][0]) for c in net.calls] == pytest.approx([80 / 81, 0.75, 0.5, 0.25])
    with pytest.raises(UserError):
        m.sample(net, torch.randn(2, 3), steps=0)


def test_multistep_renoising_comes_from_the_generator():
    torch.manual_seed(0)
    net = TinyNet(shape=(2,), hidden=16)
    e = torch.randn(8, 2)
    m = ConsistencyTraining()
    a = m.sample(net, e, steps=3, generator=torch.Generator().manual_seed(1))
    b = m.sample(net, e, steps=3, generator=torch.Generator().manual_seed(1))
    c = m.sample(net, e, steps=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # One step draws nothing: the generator's state is untouched.
    g = torch.Generator().manual_seed(3)
    m.sample(net, e, steps=1, generator=g)
    fresh = torch.Generator().manual_seed(3)
    assert torch.equal(torch.randn(2, generator=g), torch.randn(2, generator=fresh))


class _KwargNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, z, t, h, y=None, *, extra):
        self.seen.append(extra)
        return z * 0


def test_sample_passes_net_kwargs_to_every_call():
    net = _KwargNet()
    ConsistencyTraining().sample(net, torch.randn(2, 2), steps=3, net_kwargs={"extra": 7})
    assert net.seen == [7, 7, 7]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("kwargs", [
    dict(sigma_min=0.0), dict(sigma_min=90.0), dict(rho=0.0), dict(sigma_data=-1.0), dict(metric="lpips"),
    dict(huber_c=0.0), dict(two_step_sigma=100.0), dict(share_dropout_rng="yes"),
])
def test_invalid_shared_fields_raise(cls, kwargs):
    with pytest.raises(UserError):
        cls(**kwargs)


def test_base_is_not_a_method_on_its_own():
    with pytest.raises(TypeError):
        ConsistencyModel()


@pytest.mark.parametrize("cls", CLASSES)
def test_defaults_are_one_step_samplers(cls):
    m = cls()
    assert m.default_steps == 1
    assert (m.sigma_min, m.sigma_max, m.rho) == (0.002, 80.0, 7.0)


# ---------------------------------------------------------------------------------------- LPIPS metric


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    """Random LPIPS-VGG weights in the official key layout (non-negative lins), as safetensors."""
    from safetensors.torch import save_file

    from meanflow.evaluation.lpips import clear_cache, expected_shapes

    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) * (0.05 if len(shape) == 4 and shape[2] == 3 else 0.1)
             for k, shape in expected_shapes().items()}
    state.update({k: v.abs() for k, v in state.items() if k.startswith("lin")})
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.safetensors"
    save_file(state, str(path))
    yield path
    clear_cache()  # the loaded module is cached per (path, device) for the whole process


@pytest.mark.parametrize("cls", CLASSES)
def test_lpips_needs_weights_and_sane_options(cls):
    with pytest.raises(UserError, match="lpips_weights"):
        cls(metric="lpips")
    with pytest.raises(UserError, match="metric=lpips"):
        cls(metric="l2", lpips_weights="lpips.safetensors")
    for bad in (8, 0, True, 224.0):
        with pytest.raises(UserError, match="lpips_resize"):
            cls(metric="lpips", lpips_weights="lpips.safetensors", lpips_resize=bad)
    # Only the path is a field (nothing loaded, the file is read on the first loss).
    m = cls(metric="lpips", lpips_weights="no/such/file.safetensors", lpips_resize=None)
    assert (m.lpips_weights, m.lpips_resize) == ("no/such/file.safetensors", None)
    with pytest.raises(UserError, match="not found"):
        m.distance(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))


def test_ct_loss_with_lpips_backpropagates_into_the_online_network(lpips_file, one_thread):
    import copy
    import dataclasses

    from meanflow.evaluation.lpips import get_lpips, lpips_distance
    from meanflow.methods.base import Progress

    net = TinyNet(shape=(1, 8, 8), hidden=16)
    target = copy.deepcopy(net).requires_grad_(False)
    m = ConsistencyTraining(metric="lpips", lpips_weights=str(lpips_file), lpips_resize=16)
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in dataclasses.asdict(m).values())
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    t, r = torch.tensor([0.6, 0.3]), torch.tensor([0.5, 0.2])
    out = m.loss(net, x, noise=torch.randn_like(x), t=t, r=r, progress=Progress(0, 10), target=target)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None and not p.requires_grad for p in get_lpips(lpips_file).parameters())
    # distance() with the metric is the LPIPS of the pair, per sample.
    a, b = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(m.distance(a, b), lpips_distance(a, b, lpips_file, resize=16))


def test_ict_loss_with_lpips_runs(lpips_file, one_thread):
    from meanflow.methods.base import Progress

    net = TinyNet(shape=(1, 8, 8), hidden=16)
    m = ImprovedConsistencyTraining(metric="lpips", lpips_weights=str(lpips_file), lpips_resize=16)
    out = m.loss(net, torch.rand(2, 1, 8, 8) * 2 - 1, progress=Progress(0, 10))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in net.parameters())
