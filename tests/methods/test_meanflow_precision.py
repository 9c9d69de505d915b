"""MeanFlow's and iMF's JVP precision: float32 whatever the autocast (official), or following it (opt-in)."""

import pytest
import torch

from meanflow.errors import UserError
from meanflow.methods import MeanFlow
from meanflow.methods.improved_meanflow import ImprovedMeanFlow
from meanflow.networks import build_network


class OutputDtypes(torch.nn.Module):
    """Records the dtype of every output the network returns."""

    supports_tangents = True
    supports_partial_tangents = True

    def __init__(self, net):
        super().__init__()
        self.net, self.dtypes = net, []

    def forward(self, *args, **kwargs):
        out = self.net(*args, **kwargs)
        self.dtypes.append((out[0] if isinstance(out, tuple) else out).dtype)
        return out


def _dit(num_classes=0):
    torch.manual_seed(0)
    net = build_network("dit", input_size=8, in_channels=2, patch_size=2, hidden_size=64, depth=2,
                        num_heads=2, num_classes=num_classes)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _loss_and_grad(method, net, x, bf16):
    spy = OutputDtypes(net)
    torch.manual_seed(1)
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        out = method.loss(spy, x)
    grads = torch.autograd.grad(out.loss, list(net.parameters()))
    return out.loss, torch.cat([g.flatten() for g in grads]), spy.dtypes


@pytest.mark.parametrize("precision, net_dtype", [("float32", torch.float32), ("autocast", torch.bfloat16)])
def test_jvp_precision_under_bf16_autocast(precision, net_dtype):
    net, x = _dit(), torch.randn(8, 2, 8, 8)
    ref_loss, ref_grad, _ = _loss_and_grad(MeanFlow(ratio=0.5), net, x, bf16=False)
    loss, grad, dtypes = _loss_and_grad(MeanFlow(ratio=0.5, jvp_precision=precision), net, x, bf16=True)
    assert dtypes == [net_dtype]
    assert loss.dtype == torch.float32
    if precision == "float32":  # autocast has no effect at all
        torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
    else:  # bf16 rounding, the same gradient direction
        assert abs(float(loss.detach() / ref_loss.detach()) - 1) < 0.05
        cos = torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0)
        assert float(cos) > 0.99, float(cos)


@pytest.mark.parametrize("precision, net_dtype", [("float32", torch.float32), ("autocast", torch.bfloat16)])
def test_imf_jvp_precision_under_bf16_autocast(precision, net_dtype):
    net, x = _dit(), torch.randn(8, 2, 8, 8)
    make = lambda p: ImprovedMeanFlow(ratio=0.5, jvp_precision=p)  # noqa: E731
    ref_loss, ref_grad, _ = _loss_and_grad(make("float32"), net, x, bf16=False)
    loss, grad, dtypes = _loss_and_grad(make(precision), net, x, bf16=True)
    assert dtypes == [torch.float32, net_dtype]  # v_c forward (float32 always), then the JVP call
    if precision == "float32":
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
    else:
        assert abs(float(loss.detach() / ref_loss.detach()) - 1) < 0.05
        assert float(torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0)) > 0.99


@pytest.mark.parametrize("make", [MeanFlow, ImprovedMeanFlow])
def test_unknown_jvp_precision_is_a_user_error(make):
    with pytest.raises(UserError, match="jvp_precision"):
        make(jvp_precision="bf16")
