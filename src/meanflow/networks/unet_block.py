"""The residual block of EDM's ``SongUNet`` ("DDPM++"), with tangent mode.

Each residual block (``skip_scale = sqrt(1/2)``)::

    x' = conv0(silu(GN(x)))                       # with 2x up/down-sampling where needed
    x' = silu(GN(x' + A emb))                     # adaptive_scale=False (DDPM++)
    x' = silu(GN(x') (1 + s) + b), [s, b] = A emb # adaptive_scale=True
    x  = (conv1(dropout(x')) + skip(x)) * skip_scale
    x  = (proj(Attn(GN(x))) + x) * skip_scale      # at attention resolutions

``x [B, C, H, W]``, ``emb [B, E]``; every step also carries its tangent (``None`` in plain mode).
Weights are initialised as in EDM (:func:`xavier`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from meanflow.networks import layers as L


def xavier(m: nn.Linear | nn.Conv2d, gain: float = 1.0) -> nn.Module:
    """EDM's initialisation of `m`, returned: xavier-uniform weights times `gain`, zero bias."""
    nn.init.xavier_uniform_(m.weight, gain=gain)
    if m.bias is not None:
        nn.init.zeros_(m.bias)
    return m


ZERO_GAIN = 1e-5  # EDM's "init_zero": tiny rather than exactly zero


class UNetBlock(nn.Module):
    """Residual block with embedding conditioning, optional resampling and self-attention.

    Args:
        in_channels, out_channels: channel counts.
        emb_channels: width of ``emb``.
        up, down: 2x up-/down-sampling with ``resample_filter`` before ``conv0`` and the skip.
        attention: add a single-head self-attention layer after the residual.
        dropout: dropout probability before ``conv1``.
        adaptive_scale: scale/shift conditioning instead of an additive bias.
        takes_skip: the decoder concatenates an encoder skip to the input of this block.
        resample_filter: EDM's 1-D resampling filter (``(1, 1)``: box / nearest).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, dropout: float = 0.0,
                 adaptive_scale: bool = False, takes_skip: bool = False, eps: float = 1e-6,
                 resample_filter: Sequence[int] = (1, 1)):
        super().__init__()
        self.resample_filter = tuple(resample_filter)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up, self.down = up, down
        self.dropout = dropout
        self.adaptive_scale = adaptive_scale
        self.takes_skip = takes_skip
        self.skip_scale = math.sqrt(0.5)
        self.norm0 = L.GroupNorm(in_channels, eps=eps)
        self.conv0 = xavier(nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.affine = xavier(nn.Linear(emb_channels, out_channels * (2 if adaptive_scale else 1)))
        self.norm1 = L.GroupNorm(out_channels, eps=eps)
        self.conv1 = xavier(nn.Conv2d(out_channels, out_channels, 3, padding=1), ZERO_GAIN)
        self.skip = None
        if in_channels != out_channels or up or down:
            self.skip = xavier(nn.Conv2d(in_channels, out_channels, 1))
        self.attention = attention
        if attention:
            self.norm2 = L.GroupNorm(out_channels, eps=eps)
            self.qkv = xavier(nn.Conv2d(out_channels, 3 * out_channels, 1), math.sqrt(0.2))
            self.proj = xavier(nn.Conv2d(out_channels, out_channels, 1), ZERO_GAIN)

    def _resample(self, x: Tensor, dx: Tensor | None) -> L.Pair:
        if self.up:
            return L.upsample(x, dx, self.resample_filter)
        if self.down:
            return L.downsample(x, dx, self.resample_filter)
        return x, dx

    def forward(self, x: Tensor, dx: Tensor | None, emb: Tensor, demb: Tensor | None) -> L.Pair:
        """``x [B, C_in, H, W]``, ``emb [B, E]`` (with tangents) -> ``[B, C_out, H', W']``."""
        a, da = self.norm0(x, dx)
        a, da = L.silu(a, da)
        a, da = self._resample(a, da)
        a, da = L.conv2d(self.conv0, a, da)
        p, dp = L.linear(self.affine, emb, demb)
        p = p[:, :, None, None]
        dp = None if dp is None else dp[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = p.chunk(2, dim=1)
            dscale, dshift = dp.chunk(2, dim=1) if dp is not None else (None, None)
            a, da = self.norm1(a, da)
            a, da = L.modulate(a, da, shift, dshift, scale, dscale)
        else:
            a = a + p
            da = None if da is None else da + dp
            a, da = self.norm1(a, da)
        a, da = L.silu(a, da)
        a, da = L.dropout(a, da, self.dropout, self.training)
        a, da = L.conv2d(self.conv1, a, da)

        s, ds = self._resample(x, dx)
        if self.skip is not None:
            s, ds = L.conv2d(self.skip, s, ds)
        x = (a + s) * self.skip_scale
        dx = None if da is None else (da + ds) * self.skip_scale
        if self.attention:
            x, dx = self._attend(x, dx)
        return x, dx

    def _attend(self, x: Tensor, dx: Tensor | None) -> L.Pair:
        b, c, hh, ww = x.shape

        def heads(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            # [B, 3C, H, W] -> 3 x [B, 1, HW, C] (one head, as in EDM's DDPM++)
            return tuple(u.reshape(u.shape[0], 1, c, hh * ww).transpose(-2, -1) for u in t.chunk(3, dim=1))

        a, da = self.norm2(x, dx)
        a, da = L.conv2d(self.qkv, a, da)
        q, k, v = heads(a)
        dq, dk, dv = heads(da) if da is not None else (None, None, None)
        o, do = L.attention(q, k, v, dq, dk, dv)
        o = o.transpose(-2, -1).reshape(b, c, hh, ww)
        do = None if do is None else do.transpose(-2, -1).reshape(do.shape[0], c, hh, ww)
        o, do = L.conv2d(self.proj, o, do)
        x = (o + x) * self.skip_scale
        return x, None if dx is None else (do + dx) * self.skip_scale
