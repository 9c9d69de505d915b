"""pMF's perceptual losses: the paired random resized crop (auxloss_util.py:45-79), the LPIPS and
ConvNeXt distances end to end through the method with local weights files, and their sha256 checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from meanflow.data.pairs import sha256_file
from meanflow.errors import UserError
from meanflow.evaluation import convnext as cx
from meanflow.evaluation import lpips as lp
from meanflow.methods import PixelMeanFlow
from meanflow.methods import pmf_perceptual as P
from meanflow.networks import PMFDiT


def test_crop_windows_follow_the_official_draws():
    g = torch.Generator().manual_seed(0)
    top, left, h, w = P.crop_params(20000, 256, 256, generator=g).T
    assert bool((h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all())
    assert bool((top + h <= 256).all() and (left + w <= 256).all())
    # auxloss_util.py:57-72 with numpy's RNG: the same laws of (h, w, top / (256 - h))
    rng = np.random.default_rng(0)
    area = 256 * 256 * rng.uniform(0.08, 1.0, 200000)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), 200000))
    w_ref = np.clip(np.round(np.sqrt(area * aspect)), 1, 256)
    h_ref = np.clip(np.round(np.sqrt(area / aspect)), 1, 256)
    for ours, ref in ((h, h_ref), (w, w_ref), (h * w, h_ref * w_ref)):
        assert abs(ours.double().mean().item() / ref.mean() - 1) < 0.01
    room = h < 256
    assert abs((top[room] / (256 - h[room]).double()).mean().item() - 0.5) < 0.01  # top ~ U{0..256-h}
    small = P.crop_params(1000, 8, 8, generator=g)
    assert bool((small[:, 2:] >= 1).all() and (small[:, :2] + small[:, 2:] <= 8).all())


def test_the_crop_is_the_same_window_of_both_images(monkeypatch):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g)
    ca, cb = P.paired_random_resized_crop(a, b, 24, generator=torch.Generator().manual_seed(2))
    cd, _ = P.paired_random_resized_crop(a - b, b, 24, generator=torch.Generator().manual_seed(2))
    assert ca.shape == (4, 3, 24, 24)
    torch.testing.assert_close(ca - cb, cd, rtol=1e-5, atol=1e-5)  # resizing is linear: one window
    monkeypatch.setattr(P, "crop_params", lambda n, hh, ww, generator=None: torch.tensor([[4, 2, 8, 8]] * n))
    ca, cb = P.paired_random_resized_crop(a, b, 8)
    torch.testing.assert_close(ca, a[:, :, 4:12, 2:10], rtol=1e-6, atol=1e-6)  # window at its own size
    x = a.clone().requires_grad_(True)
    P.paired_random_resized_crop(x, b, 16)[0].sum().backward()
    assert x.grad.abs().sum() > 0


def _tiny_net():
    torch.manual_seed(0)
    return PMFDiT(input_size=16, in_channels=3, patch_size=4, hidden_size=16, depth=2, num_heads=2,
                  num_classes=0, bottleneck=4, aux_head_depth=1, frequency_dim=8)


def _lpips_file(path):
    """Random LPIPS-VGG weights in the official layout (computation checks only)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in lp.expected_shapes().items():
        fan = math.prod(shape[1:])
        state[k] = (torch.rand(shape, generator=g) if k.startswith("lin")
                    else torch.randn(shape, generator=g) * (2 / fan) ** 0.5 if len(shape) == 4
                    else 0.01 * torch.randn(shape, generator=g))
    save_file(state, str(path))
    return str(path)


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    return _lpips_file(tmp_path_factory.mktemp("lpips") / "lpips.safetensors")


@pytest.fixture
def files(tmp_path, monkeypatch, lpips_file):
    lp.clear_cache()
    cx.clear_cache()
    P._VERIFIED.clear()
    depths, dims = (1, 1, 1, 1), (8, 16, 24, 32)
    real = cx.get_convnext
    monkeypatch.setattr(cx, "get_convnext", lambda path, device="cpu", sha256=None: real(
        path, device, sha256, depths=depths, dims=dims))
    torch.manual_seed(1)
    conv = tmp_path / "convnext.safetensors"
    save_file({k: v + 0.1 * torch.randn_like(v) for k, v in cx.ConvNeXtV2(depths, dims).state_dict().items()},
              str(conv))
    yield lpips_file, str(conv)
    lp.clear_cache()
    cx.clear_cache()


def test_perceptual_losses_end_to_end_with_local_files(files):
    lpips_path, conv_path = files
    net = _tiny_net()
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.85, 0.95])
    kw = dict(perceptual_size=32, lpips_weights=lpips_path, convnext_weights=conv_path,
              lpips_sha256=sha256_file(lpips_path)[:16], convnext_sha256=sha256_file(conv_path))
    base = PixelMeanFlow(**kw)
    m = PixelMeanFlow(lpips_weight=0.4, convnext_weight=0.1, **kw)
    e = torch.randn_like(x)
    plain = base.loss(net, x, noise=e, t=t, r=t * 0.5)
    out = m.loss(net, x, noise=e, t=t, r=t * 0.5, generator=torch.Generator().manual_seed(0))
    assert out.metrics["lpips"] > 0 and out.metrics["convnext"] > 0 and "lpips" not in plain.metrics
    # each term is adaptively weighted, a(d) = d / (d + 0.01) < 1 per row, on the 4 rows with t < 0.8
    assert 0 < float(out.loss.detach() - plain.loss) < (0.4 + 0.1) * 4 / 6
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_a_wrong_sha256_stops_the_first_step(files):
    lpips_path, conv_path = files
    net = _tiny_net()
    x = torch.rand(2, 3, 16, 16)
    for kw in (dict(lpips_weight=0.4, lpips_weights=lpips_path, lpips_sha256="deadbeef"),
               dict(convnext_weight=0.1, convnext_weights=conv_path, convnext_sha256="deadbeef")):
        m = PixelMeanFlow(perceptual_size=32, **kw)
        with pytest.raises(UserError, match="sha256") as err:
            m.loss(net, x, t=torch.tensor([0.2, 0.3]))
        assert "\n" not in str(err.value)


def test_perceptual_losses_need_images(files):
    lpips_path, _ = files
    m = PixelMeanFlow(perceptual_size=32, lpips_weight=0.4, lpips_weights=lpips_path)
    with pytest.raises(UserError, match="images"):
        m._perceptual(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2), {}, None)
