"""EDM augmentation: identity at p = 0, label layout and signs, shapes, seeded repeatability."""

import math

import pytest
import torch

from meanflow.data.augment import AUGMENT_DIM, AugmentPipe
from meanflow.errors import UserError


def _images(n=6, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


def test_p0_is_identity_with_zero_labels():
    x = _images()
    out, labels = AugmentPipe(p=0.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)
    assert labels.shape == (6, AUGMENT_DIM) and labels.dtype == torch.float32
    assert not labels.any()


def test_xflip_only_label_and_sign():
    x = _images(n=32)
    pipe = AugmentPipe(p=1.0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)
    out, labels = pipe(x, torch.Generator().manual_seed(3))
    flipped = labels[:, 0] == 1
    assert 0 < int(flipped.sum()) < 32  # a fair coin per image
    assert not labels[:, 1:].any()  # transforms that are off give zero labels
    assert torch.equal(out[flipped], x[flipped].flip(3))
    assert torch.equal(out[~flipped], x[~flipped])


def test_p1_all_transforms_shapes_and_label_consistency():
    x = _images(n=16, c=1, size=8)
    out, labels = AugmentPipe(p=1.0)(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and labels.shape == (16, AUGMENT_DIM)
    assert torch.isfinite(out).all()
    assert set(labels[:, 0].tolist()) <= {0.0, 1.0} and set(labels[:, 1].tolist()) <= {0.0, 1.0}
    # rotation labels (cos a - 1, sin a) lie on the circle shifted by -1
    torch.testing.assert_close((labels[:, 3] + 1) ** 2 + labels[:, 4] ** 2, torch.ones(16))
    assert labels[:, 2].abs().gt(0).all() and labels[:, 7:].abs().gt(0).all()  # all applied at p = 1
    assert not torch.allclose(out, x)


def test_translation_moves_by_the_labelled_amount():
    """On a linear ramp in x, a shift by s pixels (label * W * 0.125) lowers the interior by slope * s
    (positive labels move the content right / down)."""
    size, slope = 32, 0.02
    col = torch.arange(size, dtype=torch.float32) * slope
    x = torch.stack([col[None, :].expand(size, size), col[:, None].expand(size, size)])[None]
    x = x.expand(8, 2, size, size).contiguous() - 0.3
    pipe = AugmentPipe(p=1.0, xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=1)
    out, labels = pipe(x, torch.Generator().manual_seed(5))
    assert not labels[:, :7].any()
    inner = (slice(None), slice(None), slice(10, -10), slice(10, -10))
    for i in range(8):
        sx, sy = (float(v) * size * 0.125 for v in labels[i, 7:])
        if max(abs(sx), abs(sy)) > 6:
            continue
        expected = x[i] - slope * torch.tensor([sx, sy])[:, None, None]
        torch.testing.assert_close(out[i][inner[1:]], expected[inner[1:]], atol=2e-3, rtol=0)


def test_seeded_repeatability_and_batch_independent_of_global_rng():
    x = _images()
    pipe = AugmentPipe(p=0.5)
    a = pipe(x, torch.Generator().manual_seed(7))
    torch.manual_seed(123)
    b = pipe(x, torch.Generator().manual_seed(7))
    c = pipe(x, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_rate_matches_p():
    """Each geometric transform hits about p of the samples; x-flip (multiplier 1e8) half of them."""
    n = 4000
    x = torch.zeros(n, 1, 4, 4)
    _, labels = AugmentPipe(p=0.12)(x, torch.Generator().manual_seed(0))
    assert abs(float(labels[:, 0].mean()) - 0.5) < 0.03
    for col in (1,):  # y-flip: coin only when applied
        assert abs(float(labels[:, col].mean()) - 0.06) < 0.02
    for col in (2, 4, 7):
        assert abs(float((labels[:, col] != 0).float().mean()) - 0.12) < 0.02
    assert labels[:, 3].abs().max() <= 2.0 and labels[:, 4].abs().max() <= 1.0
    assert math.isfinite(float(labels.sum()))


def test_bad_inputs():
    with pytest.raises(UserError):
        AugmentPipe(p=1.5)
    with pytest.raises(UserError):
        AugmentPipe(p=0.5)(torch.zeros(2, 4))
