"""EDM's geometric augmentation (Karras et al. 2022, after ADA), with its 9 augmentation labels.

The paper's CIFAR-10 recipe trains with EDM's augmentation pipe at p = 0.12 and feeds the labels that
describe each sample's transform to the network as extra conditioning, so the network learns
``augmented image -> augmented image`` without leaking the augmentation into generation (which
passes zero labels: "no augmentation"). The configuration is EDM's CIFAR-10 one::

    AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)

Each transform ``k`` is applied to a sample with probability ``min(mult_k * p, 1)`` (so ``xflip=1e8``
means "always draw a random flip", i.e. half the images are mirrored whatever p > 0 is). Label layout
``[B, 9]`` (float32, zero where a transform is not applied)::

    0  xflip        1 if mirrored left-right, else 0
    1  yflip        1 if mirrored top-bottom, else 0
    2  scale        w ~ N(0, 1); isotropic scale factor 2^(0.2 w)
    3  rotate       cos(a) - 1    a ~ U(-pi, pi): rotation angle
    4  rotate       sin(a)
    5  aniso        w cos(r)      w ~ N(0, 1): stretch 2^(0.2 w) along x', 2^(-0.2 w) along y'
    6  aniso        w sin(r)      r ~ U(-pi, pi) with probability 1/2, else 0: frame angle
    7  translate    wx ~ N(0, 1); shift by 0.125 * W * wx pixels
    8  translate    wy ~ N(0, 1); shift by 0.125 * H * wy pixels

Flips are pixel copies. The geometric part (scale, rotation, anisotropy, translation) is one affine
map per sample, executed as in EDM: reflect padding, 2x upsampling with the ``sym6`` wavelet low-pass
filter, bilinear resampling, and the matching 2x downsampling. Samples whose affine map is the
identity are left untouched (EDM resamples them too, which reproduces them up to rounding).

All random draws come from a ``torch.Generator`` (on the CPU, in a fixed order), so a training step
reseeded from ``(seed, rank, step)`` augments exactly the same way after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from meanflow.errors import UserError

AUGMENT_DIM = 9
"""Length of the augmentation label vector (EDM's ``augment_dim`` for this pipe)."""

# Low-pass filter of the Symlet-6 wavelet (PyWavelets' 'sym6' dec_lo coefficients): orthogonal, so
# upsampling then downsampling with it reconstructs a band-limited image.
_SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
         0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
         -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)


@dataclass
class AugmentPipe:
    """Random per-sample geometric augmentation of a batch of images.

    Attributes:
        p: Overall augmentation probability (paper CIFAR-10: 0.12); 0 = identity.
        xflip: Probability multiplier of the left-right flip (EDM CIFAR-10: 1e8 = always drawn).
        yflip: Probability multiplier of the top-bottom flip.
        scale: Probability multiplier of isotropic scaling.
        rotate_frac: Probability multiplier of rotation by an arbitrary angle.
        aniso: Probability multiplier of anisotropic scaling.
        translate_frac: Probability multiplier of sub-pixel translation.
        scale_std: log2 standard deviation of the isotropic scale.
        rotate_frac_max: Rotation range as a fraction of a half turn each way (1 = full circle).
        aniso_std: log2 standard deviation of the anisotropic scale.
        aniso_rotate_prob: Probability that the anisotropic stretch uses a rotated frame.
        translate_frac_std: Standard deviation of the translation, relative to the image size.
    """

    p: float = 0.12
    xflip: float = 1e8
    yflip: float = 1.0
    scale: float = 1.0
    rotate_frac: float = 1.0
    aniso: float = 1.0
    translate_frac: float = 1.0
    scale_std: float = 0.2
    rotate_frac_max: float = 1.0
    aniso_std: float = 0.2
    aniso_rotate_prob: float = 0.5
    translate_frac_std: float = 0.125

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise UserError(f"augmentation probability p must be in [0, 1], got {self.p}")
        mults = (self.xflip, self.yflip, self.scale, self.rotate_frac, self.aniso, self.translate_frac)
        if min(mults) < 0:
            raise UserError("augmentation probability multipliers must be >= 0")

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Augment a batch.

        Args:
            images: ``[B, C, H, W]`` (any C; pixel images in [-1, 1]).
            generator: CPU generator of all random draws (None: the global CPU generator).

        Returns:
            ``(augmented [B, C, H, W], labels [B, 9] float32)`` on the images' device; the label
            layout is in the module docstring. With ``p = 0`` the images come back unchanged and the
            labels are zero.
        """
        if images.ndim != 4:
            raise UserError(f"augmentation needs images [B, C, H, W], got shape {tuple(images.shape)}")
        n, _, h, w = images.shape
        labels = torch.zeros(n, AUGMENT_DIM)
        if self.p == 0 or n == 0:
            return images, labels.to(images.device)
        draw = _Draws(n, self.p, generator)

        # Pixel blitting: flips (EDM draws a random bit, kept with probability mult * p).
        fx = draw.gate(draw.bit(), self.xflip) if self.xflip > 0 else labels[:, 0]
        fy = draw.gate(draw.bit(), self.yflip) if self.yflip > 0 else labels[:, 1]
        labels[:, 0], labels[:, 1] = fx, fy
        dev = images.device
        images = torch.where(fx.bool().to(dev)[:, None, None, None], images.flip(3), images)
        images = torch.where(fy.bool().to(dev)[:, None, None, None], images.flip(2), images)

        # Geometric transforms, composed as the inverse map from output to input pixel coordinates
        # (centred: the image centre is (0, 0), x to the right, y down).
        g_inv = torch.eye(3).repeat(n, 1, 1)
        if self.scale > 0:
            ws = draw.gate(draw.normal(), self.scale)
            s = torch.exp2(ws * self.scale_std)
            g_inv = g_inv @ _scale(1 / s, 1 / s)
            labels[:, 2] = ws
        if self.rotate_frac > 0:
            a = draw.gate((draw.uniform() * 2 - 1) * (math.pi * self.rotate_frac_max), self.rotate_frac)
            g_inv = g_inv @ _rotate(a)
            labels[:, 3], labels[:, 4] = torch.cos(a) - 1, torch.sin(a)
        if self.aniso > 0:
            wa = draw.normal()
            r = (draw.uniform() * 2 - 1) * math.pi
            wa = draw.gate(wa, self.aniso)
            r = torch.where(draw.uniform() < self.aniso_rotate_prob, r, torch.zeros_like(r))
            s = torch.exp2(wa * self.aniso_std)
            g_inv = g_inv @ _rotate(-r) @ _scale(1 / s, s) @ _rotate(r)
            labels[:, 5], labels[:, 6] = wa * torch.cos(r), wa * torch.sin(r)
        if self.translate_frac > 0:
            tx, ty = draw.gate(draw.normal(2), self.translate_frac)
            g_inv = g_inv @ _translate(-tx * w * self.translate_frac_std, -ty * h * self.translate_frac_std)
            labels[:, 7], labels[:, 8] = tx, ty

        moved = (g_inv - torch.eye(3)).abs().flatten(1).amax(dim=1) > 0
        if bool(moved.any()):
            idx = moved.nonzero().squeeze(1)
            out = _resample(images[idx.to(dev)], g_inv[idx].to(dev, torch.float32))
            images = images.clone()
            images[idx.to(dev)] = out.to(images.dtype)
        return images, labels.to(dev)


class _Draws:
    """Random draws of one batch from one generator (CPU, float32), in the caller's order."""

    def __init__(self, n: int, p: float, generator: torch.Generator | None) -> None:
        self.n, self.p, self.g = n, p, generator

    def uniform(self) -> Tensor:
        return torch.rand(self.n, generator=self.g)

    def normal(self, *lead: int) -> Tensor:
        return torch.randn(*lead, self.n, generator=self.g)

    def bit(self) -> Tensor:
        return torch.randint(2, (self.n,), generator=self.g).float()

    def gate(self, v: Tensor, mult: float) -> Tensor:
        """``v`` where a transform of probability multiplier ``mult`` is applied (``u < mult * p``),
        else 0; one decision per sample."""
        return torch.where(self.uniform() < mult * self.p, v, torch.zeros_like(v))


def _affine(a, b, c, d, e, f) -> Tensor:
    """Batch of 3x3 matrices ``[[a, b, c], [d, e, f], [0, 0, 1]]`` from ``[B]`` tensors or floats."""
    ref = next(x for x in (a, b, c, d, e, f) if isinstance(x, Tensor))
    rows = [torch.as_tensor(x, dtype=torch.float32).expand_as(ref) for x in (a, b, c, d, e, f)]
    m = torch.zeros(ref.shape[0], 3, 3)
    m[:, 0] = torch.stack(rows[:3], dim=1)
    m[:, 1] = torch.stack(rows[3:], dim=1)
    m[:, 2, 2] = 1
    return m


def _scale(sx: Tensor, sy: Tensor) -> Tensor:
    return _affine(sx, 0.0, 0.0, 0.0, sy, 0.0)


def _rotate(a: Tensor) -> Tensor:
    c, s = torch.cos(a), torch.sin(a)
    return _affine(c, -s, 0.0, s, c, 0.0)


def _translate(tx: Tensor, ty: Tensor) -> Tensor:
    return _affine(1.0, 0.0, tx, 0.0, 1.0, ty)


def _filter_along(x: Tensor, taps: Tensor, dim: int, *, stride: int = 1, pad: int = 0) -> Tensor:
    """Depthwise 1-D correlation of ``[B, C, H, W]`` with ``taps`` along H (dim=2) or W (dim=3)."""
    c = x.shape[1]
    k = taps.to(x.dtype).reshape(1, 1, -1, 1) if dim == 2 else taps.to(x.dtype).reshape(1, 1, 1, -1)
    strides = (stride, 1) if dim == 2 else (1, stride)
    padding = (pad, 0) if dim == 2 else (0, pad)
    return F.conv2d(x, k.expand(c, 1, *k.shape[2:]), stride=strides, padding=padding, groups=c)


def _zero_stuff(x: Tensor, dim: int) -> Tensor:
    """Insert a zero after every sample along ``dim`` and drop the trailing one: n -> 2n - 1."""
    y = torch.stack([x, torch.zeros_like(x)], dim=dim + 1).flatten(dim, dim + 1)
    return y.narrow(dim, 0, y.shape[dim] - 1)


def _resample(images: Tensor, g_inv: Tensor) -> Tensor:
    """Apply per-sample inverse affine maps ``g_inv [B, 3, 3]`` (centred pixel coordinates) to
    ``images [B, C, H, W]`` with reflect padding and 2x supersampling through the sym6 filter."""
    n, c, h, w = images.shape
    taps = torch.tensor(_SYM6, device=images.device)
    tpad = len(_SYM6) // 4  # extra output margin the filters need (3 pixels)
    cx, cy = (w - 1) / 2, (h - 1) / 2

    # Reflect padding wide enough for every transformed corner plus the filter support, at most
    # one image size minus one per side (the limit of reflect padding).
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]],
                           dtype=g_inv.dtype, device=g_inv.device)
    src = g_inv @ corners.t()  # [B, 3, 4]: where the output corners come from
    xs, ys = src[:, 0].flatten(), src[:, 1].flatten()
    reach = torch.stack([(-xs).max(), (-ys).max(), xs.max(), ys.max()])
    reach = reach + torch.tensor([2 * tpad - cx, 2 * tpad - cy] * 2, device=reach.device)
    limit = torch.tensor([w - 1, h - 1] * 2, device=reach.device, dtype=reach.dtype)
    mx0, my0, mx1, my1 = (int(v) for v in torch.minimum(reach.clamp(min=0), limit).ceil().tolist())
    x = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
    # The padded image's centre is off the original one by half the padding difference.
    g = _translate(torch.full((n,), (mx0 - mx1) / 2), torch.full((n,), (my0 - my1) / 2)).to(g_inv)
    g = g @ g_inv

    # 2x upsampling: zero-stuff, then the (flipped) low-pass filter along each axis.
    up = taps.flip(0)
    x = _filter_along(_zero_stuff(x, 3), up, 3, pad=(len(_SYM6) + 1) // 2)
    x = _filter_along(_zero_stuff(x, 2), up, 2, pad=(len(_SYM6) + 1) // 2)
    # In upsampled centred coordinates a point p sits at (p + 1/2) / 2 of the original grid.
    s2 = torch.diag(torch.tensor([2.0, 2.0, 1.0], device=g.device))
    half = torch.eye(3, device=g.device)
    half[:2, 2] = 0.5
    g = torch.linalg.inv(half) @ s2 @ g @ torch.linalg.inv(s2) @ half

    # Resample onto a 2x grid with a margin of `tpad` original pixels, in grid_sample's normalised
    # coordinates (align_corners=False: [-1, 1] spans the outer pixel edges).
    out_h, out_w = (h + 2 * tpad) * 2, (w + 2 * tpad) * 2
    to_norm = torch.diag(torch.tensor([2 / x.shape[3], 2 / x.shape[2], 1.0], device=g.device))
    from_norm = torch.diag(torch.tensor([out_w / 2, out_h / 2, 1.0], device=g.device))
    theta = (to_norm @ g @ from_norm)[:, :2, :].to(x.dtype)
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # 2x downsampling with the low-pass filter, then crop the margin.
    x = _filter_along(x, taps, 3, stride=2, pad=(len(_SYM6) - 1) // 2)[:, :, :, tpad:-tpad]
    x = _filter_along(x, taps, 2, stride=2, pad=(len(_SYM6) - 1) // 2)[:, :, tpad:-tpad, :]
    return x
