"""ConsistencyTraining: curricula N(k) and mu(k), the loss by hand, the target's role, validation."""

import copy

import pytest
import torch
from method_testnets import SpyNet, TinyNet, Wrapper

from meanflow.errors import UserError
from meanflow.methods.base import Progress
from meanflow.methods.consistency import scalings, sigma_to_t
from meanflow.methods.consistency_training import ConsistencyTraining, ct_num_scales, ct_target_decay

K = 800_000


def test_curriculum_by_hand():
    # N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 with s0 = 2, s1 = 150 (151^2 - 4 = 22797):
    #   k = 0:     sqrt(4) = 2                         -> ceil(1) + 1 = 2
    #   k = K/2:   sqrt(22797/2 + 4) = 106.7825        -> ceil(105.78) + 1 = 107
    #   k = K - 1: sqrt(22797 (1 - 1/K) + 4) = 150.9999 -> ceil(149.9999) + 1 = 151
    assert [ct_num_scales(k, K, 2, 150) for k in (0, K // 2, K - 1)] == [2, 107, 151]
    assert ct_num_scales(K // 2, K, 2, 200) == 143  # sqrt(0.5 (201^2 - 4) + 4) = 142.13 -> ceil(141.13) + 1
    # mu(k) = exp(s0 ln(mu0) / N(k)) = 0.9^(2 / N):  N = 2 -> 0.9, 107 -> 0.998033, 151 -> 0.998605
    m = ConsistencyTraining()
    mus = [m.target_decay(Progress(k, K)) for k in (0, K // 2, K - 1)]
    assert mus == pytest.approx([0.9, 0.9980326, 0.9986055], rel=1e-6)
    # Reference code: exp(s0 ln(mu0) / (N - 1)): 0.9^2 = 0.81 at k = 0, 0.9^(2/106) = 0.998014 at K/2.
    code = ConsistencyTraining(ema_rule="code")
    assert code.target_decay(Progress(0, K)) == pytest.approx(0.81)
    assert code.target_decay(Progress(K // 2, K)) == pytest.approx(0.9980140, rel=1e-6)
    assert ct_target_decay(2, 2, 0.95) == pytest.approx(0.95)


def test_loss_by_hand_with_overrides():
    """Online F = a z, target F = b z: f = (c_skip + c_out a c_in) x_sigma at each level, L2 summed."""
    a, b = 0.3, -0.2
    net, target = SpyNet(scale=a), SpyNet(scale=b)
    x, z = torch.randn(4, 3), torch.randn(4, 3)
    t, r = torch.tensor([0.9, 0.5, 0.3, 0.01]), torch.tensor([0.8, 0.4, 0.1, 0.005])
    m = ConsistencyTraining()
    out = m.loss(net, x, noise=z, t=t, r=r, progress=Progress(0, 10), target=target)
    hi, lo = t / (1 - t), r / (1 - r)

    def f(scale, sigma):
        c_skip, c_out, c_in = scalings(sigma, 0.5, 0.002)
        return (c_skip + c_out * scale * c_in)[:, None] * (x + sigma[:, None] * z)

    expected = (f(a, hi) - f(b, lo)).square().sum(1).mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(net.calls[0][0], sigma_to_t(hi))
    torch.testing.assert_close(target.calls[0][0], sigma_to_t(lo))
    assert float(out.metrics["N"]) == 2 and out.metrics["N"].ndim == 0
    assert float(out.metrics["mu"]) == pytest.approx(0.9)
    assert not out.metrics["loss"].requires_grad


def test_pairs_are_adjacent_grid_levels_with_the_current_n():
    net, target = SpyNet(), SpyNet()
    m = ConsistencyTraining()
    m.loss(net, torch.randn(2000, 2), progress=Progress(K // 2, K), target=target)
    grid_t = sigma_to_t(m.sigmas(107)).float()
    hi = net.calls[0][0]
    lo = target.calls[0][0]
    i_hi = (hi[:, None] - grid_t[None]).abs().argmin(1)
    i_lo = (lo[:, None] - grid_t[None]).abs().argmin(1)
    torch.testing.assert_close(hi, grid_t[i_hi])
    assert torch.equal(i_hi, i_lo + 1)
    assert set(i_lo.tolist()) == set(range(106))  # every pair n = 1..N-1 is drawn


class _GradRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.grad_enabled = []

    def forward(self, z, t, h, y=None):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.w * z


def test_target_runs_without_grad_and_only_the_online_net_gets_gradients():
    net = TinyNet(shape=(2,), hidden=16)
    wrapped = Wrapper(net)
    target = _GradRecorder()
    out = ConsistencyTraining().loss(wrapped, torch.randn(8, 2), progress=Progress(5, 10), target=target)
    out.loss.backward()
    assert target.grad_enabled == [False] and target.w.grad is None
    assert wrapped.calls == 1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


class _DropoutProbe(torch.nn.Module):
    """Records one uniform draw per call, as a dropout mask would consume the RNG."""

    def __init__(self):
        super().__init__()
        self.draws = []

    def forward(self, z, t, h, y=None):
        self.draws.append(float(torch.rand(())))
        return z * 0


@pytest.mark.parametrize("share", [True, False])
def test_dropout_rng_is_shared_between_online_and_target(share):
    net, target = _DropoutProbe(), _DropoutProbe()
    ConsistencyTraining(share_dropout_rng=share).loss(net, torch.randn(4, 2), progress=Progress(0, 10),
                                                      target=target)
    assert (net.draws == target.draws) is share


def test_dropout_masks_match_with_a_real_dropout_net():
    """Online = target (same weights) and the same level for both: with shared masks the loss is 0."""
    torch.manual_seed(0)
    net = TinyNet(shape=(2,), hidden=32, depth=3, dropout=0.5).train()
    target = copy.deepcopy(net)
    x, z = torch.randn(16, 2), torch.randn(16, 2)
    t = torch.full((16,), 0.6)
    m = ConsistencyTraining()
    # r slightly below t so that the override is valid; both passes see (nearly) the same input.
    r = t - 1e-7
    shared = m.loss(net, x, noise=z, t=t, r=r, progress=Progress(0, 1), target=target)
    unshared = ConsistencyTraining(share_dropout_rng=False).loss(
        net, x, noise=z, t=t, r=r, progress=Progress(0, 1), target=target)
    assert float(shared.loss.detach()) < 1e-6 < float(unshared.loss.detach())


def test_missing_context_and_bad_overrides_raise():
    net, x = SpyNet(), torch.randn(3, 2)
    m = ConsistencyTraining()
    with pytest.raises(UserError, match="target"):
        m.loss(net, x, progress=Progress(0, 10))
    with pytest.raises(UserError, match="progress"):
        m.loss(net, x, target=SpyNet())
    ctx = dict(progress=Progress(0, 10), target=SpyNet())
    with pytest.raises(UserError):
        m.loss(net, x, t=torch.full((3,), 0.5), **ctx)  # r missing
    with pytest.raises(UserError):
        m.loss(net, x, t=torch.full((3,), 0.5), r=torch.full((3,), 0.6), **ctx)  # r > t
    with pytest.raises(UserError):
        m.loss(net, x, t=torch.full((3,), 0.999), r=torch.full((3,), 0.5), **ctx)  # sigma > 80
    with pytest.raises(UserError):
        m.loss(net, x, noise=torch.randn(3, 3), **ctx)


@pytest.mark.parametrize("kwargs", [dict(s0=1), dict(s0=2.5), dict(s1=0), dict(mu0=1.0), dict(mu0=-0.1),
                                    dict(ema_rule="adaptive")])
def test_invalid_fields_raise(kwargs):
    with pytest.raises(UserError):
        ConsistencyTraining(**kwargs)


def test_needs():
    assert ConsistencyTraining.needs == frozenset({"progress", "target"})
