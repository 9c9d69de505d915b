"""``MeanFlow(compile=True)`` gives the eager loss and gradients (SPEC §4.3: compiled JVPs have had
silent wrong-tangent bugs). Building the compiled graph takes ~20-30 s per route on a CPU, so the
nets are tiny and there is one case per JVP route."""

import pytest
import torch
from method_testnets import TinyNet

from meanflow.methods import MeanFlow


@pytest.mark.slow
@pytest.mark.parametrize("tangent_mode", [True, False])
def test_compiled_loss_and_grads_equal_eager(tangent_mode):
    torch.manual_seed(0)
    net = TinyNet(shape=(3,), hidden=16, tangent_mode=tangent_mode)
    x, noise = torch.randn(8, 3), torch.randn(8, 3)
    t = torch.rand(8) * 0.9 + 0.05
    r = t * torch.rand(8)
    results = []
    for compile_ in (False, True):
        out = MeanFlow(compile=compile_).loss(net, x, noise=noise, t=t, r=r)
        grads = torch.autograd.grad(out.loss, list(net.parameters()))
        results.append((out.loss.detach(), grads, out.metrics["mse"]))
    (le, ge, me), (lc, gc, mc) = results
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mc, me, rtol=1e-5, atol=1e-7)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # A wrong tangent would change the target, hence the gradients, far beyond these tolerances:
    assert max(float(g.abs().max()) for g in ge) > 1e-3
