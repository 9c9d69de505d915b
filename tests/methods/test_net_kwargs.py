"""`net_kwargs` reach every network call of `loss` and `sample`, on every JVP route."""

import pytest
import torch
from method_testnets import Wrapper
from torch import nn

from meanflow.methods import FlowMatching, MeanFlow


class KwNet(nn.Module):
    """``out = (W z) (1 + t + h) + A extra``; ``extra`` is a required keyword. Records each call.

    The tangent mode is written by hand: ``dout = (W dz)(1 + t + h) + (W z)(dt + dh)``.
    """

    def __init__(self, tangent_mode: bool):
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=False)
        self.aug = nn.Linear(3, 2, bias=False)
        self.supports_tangents = tangent_mode
        self.calls: list[tuple[bool, torch.Tensor]] = []

    def forward(self, z, t, h, y=None, tangents=None, *, extra):
        self.calls.append((tangents is not None, extra))
        s = (1 + t + h)[:, None]
        out = self.lin(z) * s + self.aug(extra)
        if tangents is None:
            return out
        dz, dt, dh = tangents
        with torch.no_grad():
            dout = self.lin(dz) * s + self.lin(z) * (dt + dh)[:, None]
        return out, dout


def _fixed(b=5):
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(b, 2, generator=g), torch.randn(b, 2, generator=g)
    t = torch.rand(b, generator=g) * 0.5 + 0.5
    r = t * torch.rand(b, generator=g)
    extra = torch.randn(b, 3, generator=g)
    return x, e, t, r, extra


@pytest.mark.parametrize("route", ["tangents", "fallback", "wrapped-fallback", "wrapped-tangents"])
@pytest.mark.parametrize("guided", [False, True])
def test_meanflow_loss_passes_net_kwargs_to_every_call(route, guided):
    torch.manual_seed(0)
    inner = KwNet(tangent_mode=route.endswith("tangents"))
    net = Wrapper(inner) if route.startswith("wrapped") else inner
    x, e, t, r, extra = _fixed()
    kw = dict(num_classes=3, omega=1.5, kappa=0.2) if guided else {}
    y = torch.tensor([0, 1, 2, 0, 1]) if guided else None
    method = MeanFlow(**kw)
    out = method.loss(net, x, y, noise=e, t=t, r=r, net_kwargs={"extra": extra})
    assert torch.isfinite(out.loss)
    assert len(inner.calls) >= (3 if guided else 1)
    assert all(c[1] is extra for c in inner.calls)
    if route == "tangents":
        assert any(c[0] for c in inner.calls)

    # the fallback and tangent-mode routes agree with the kwargs in play
    ref = KwNet(tangent_mode=not inner.supports_tangents)
    ref.load_state_dict(inner.state_dict())
    out_ref = method.loss(ref, x, y, noise=e, t=t, r=r, net_kwargs={"extra": extra})
    torch.testing.assert_close(out.loss, out_ref.loss)
    # and the extra input changes the loss (it is really used)
    other = method.loss(ref, x, y, noise=e, t=t, r=r, net_kwargs={"extra": extra + 1})
    assert not torch.allclose(other.loss, out.loss)


def test_missing_net_kwargs_reach_the_network_as_missing():
    with pytest.raises(TypeError, match="extra"):
        MeanFlow().loss(KwNet(True), torch.randn(2, 2))


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_flow_matching_loss_and_sample(solver):
    net = KwNet(tangent_mode=False)
    x, e, t, _, extra = _fixed()
    fm = FlowMatching(solver=solver)
    out = fm.loss(net, x, noise=e, t=t, net_kwargs={"extra": extra})
    assert torch.isfinite(out.loss) and len(net.calls) == 1 and net.calls[0][1] is extra
    net.calls.clear()
    z = fm.sample(net, e, steps=3, net_kwargs={"extra": extra})
    assert z.shape == e.shape
    assert len(net.calls) == (3 if solver == "euler" else 6)
    assert all(c[1] is extra for c in net.calls)


def test_meanflow_sample_passes_net_kwargs_every_step():
    net = KwNet(tangent_mode=True)
    _, e, _, _, extra = _fixed()
    z = MeanFlow().sample(net, e, steps=2, net_kwargs={"extra": extra})
    assert z.shape == e.shape
    assert [c[0] for c in net.calls] == [False, False]
    assert all(c[1] is extra for c in net.calls)
    z0 = MeanFlow().sample(net, e, steps=2, net_kwargs={"extra": torch.zeros_like(extra)})
    assert not torch.allclose(z, z0)
