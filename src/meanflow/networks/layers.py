"""Tangent-aware building blocks: every function maps ``(x, dx)`` to ``(y, dy)``.

``y`` is the ordinary primal result (built with autograd, so it can be trained). ``dy`` is the
forward-mode derivative of ``y`` along ``dx``: ``dy = J_f(x) dx``. It is computed under
``torch.no_grad()`` because every caller uses it as a stop-gradient target, so it adds no
activations to the autograd graph; wherever possible it reuses the primal's intermediates.

Passing ``dx=None`` turns the tangent off: the function runs only the primal and returns
``(y, None)``. That *plain* path uses only ops that have forward-AD rules, so it also works
under ``torch.func.jvp`` (the generic fallback used for networks without tangent mode).

Tangent formulas used below (``.`` is elementwise, ``<a>`` a mean over the normalised axis):

* linear / conv:       ``dy = W dx``                       (no bias)
* norm:                ``y = (x - <x>) r``, ``r = 1/sqrt(var + eps)``,
                       ``dy = r (dxc - y <y dxc>)`` with ``dxc = dx - <dx>``
                       (symmetric Jacobian: computed by the fused backward kernel)
* activation f:        ``dy = f'(x) . dx``  (equal to the backward: fused kernel)
* modulate:            ``y = x (1 + s) + b``, ``dy = dx (1 + s) + x ds + db``
* attention:           ``O = P V``, ``P = softmax(S)``, ``S = q k^T / sqrt(d)``,
                       ``dS = (dq k^T + q dk^T) / sqrt(d)``,
                       ``dO = (P . dS) V - rowsum(P . dS) O + P dV``
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import forward_ad

from meanflow.networks.attention_tangent import attention_tangent

Pair = tuple[Tensor, "Tensor | None"]


def lead(x: Tensor, dx: Tensor) -> Tensor:
    """The rows of a primal operand that a tangent covers.

    A tangent may cover only the leading ``n = dx.shape[0]`` rows of the batch (MeanFlow needs
    ``du/dt`` only where ``r != t``; see :mod:`meanflow.networks.base`), so wherever a tangent
    formula reuses a primal tensor it takes ``x[:n]``, a view. ``x`` must be batch-first (dim 0 the
    batch, or 1 to broadcast over it; a 1-D parameter would be cut wrongly). Operands of leading size
    1 and full-size tangents pass through unchanged.
    """
    n = dx.shape[0]
    return x if x.shape[0] in (1, n) else x[:n]


def _forward_ad_active() -> bool:
    """True inside ``torch.func`` transforms or an ``autograd.forward_ad.dual_level``."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


# ----------------------------------------------------------------------------------------------
# Linear maps.


def linear(m: nn.Linear, x: Tensor, dx: Tensor | None = None) -> Pair:
    """Affine layer ``y = x W^T + b``; tangent ``dy = dx W^T``.

    Args:
        m: the layer holding ``weight [out, in]`` and optional ``bias [out]``.
        x: input ``[..., in]``.
        dx: tangent of ``x`` (same shape) or None.

    Returns:
        ``(y, dy)``, both ``[..., out]``.
    """
    y = F.linear(x, m.weight, m.bias)
    if dx is None:
        return y, None
    with torch.no_grad():
        dy = F.linear(dx, m.weight)
    return y, dy


def conv2d(m: nn.Conv2d, x: Tensor, dx: Tensor | None = None) -> Pair:
    """2-D convolution ``y = W * x + b``; tangent is the same convolution without bias.

    Args:
        m: an ``nn.Conv2d`` (its stride, padding, dilation and groups are used).
        x: input ``[B, C_in, H, W]``.
        dx: tangent of ``x`` or None.

    Returns:
        ``(y, dy)``, both ``[B, C_out, H', W']``.
    """
    y = m(x)
    if dx is None:
        return y, None
    with torch.no_grad():
        dy = F.conv2d(dx, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
    return y, dy


def resample_kernel(taps, channels: int, like: Tensor) -> Tensor:
    """EDM's separable resampling kernel ``f f^T / (sum f)^2`` for each of ``channels`` channels:
    ``[C, 1, K, K]`` with ``like``'s dtype and device (``taps``: the 1-D filter, e.g. ``[1, 3, 3, 1]``)."""
    f = torch.as_tensor(taps, dtype=torch.float32, device=like.device)
    f = torch.outer(f, f) / f.sum().square()
    return f.to(like.dtype)[None, None].expand(channels, 1, *f.shape)


def _down(u: Tensor, taps) -> Tensor:
    if tuple(taps) == (1, 1):
        return F.avg_pool2d(u, 2)  # the same map, a faster kernel
    k = resample_kernel(taps, u.shape[1], u)
    return F.conv2d(u, k, stride=2, padding=(k.shape[-1] - 1) // 2, groups=u.shape[1])


def _up(u: Tensor, taps) -> Tensor:
    if tuple(taps) == (1, 1):
        return F.interpolate(u, scale_factor=2.0, mode="nearest")
    k = resample_kernel(taps, u.shape[1], u) * 4
    return F.conv_transpose2d(u, k, stride=2, padding=(k.shape[-1] - 1) // 2, groups=u.shape[1])


def downsample(x: Tensor, dx: Tensor | None = None, taps=(1, 1)) -> Pair:
    """2x down-sampling with EDM's resample filter ``taps`` (``[1, 1]``: 2x2 box, ``[1, 3, 3, 1]``:
    the smoother filter of the official MeanFlow U-Net); linear, so ``dy = D dx``.

    ``y = conv2d(x, f f^T / (sum f)^2, stride 2, padding (K - 1) // 2)`` per channel.
    Shapes: ``[B, C, H, W] -> [B, C, H/2, W/2]``.
    """
    y = _down(x, taps)
    if dx is None:
        return y, None
    with torch.no_grad():
        return y, _down(dx, taps)


def upsample(x: Tensor, dx: Tensor | None = None, taps=(1, 1)) -> Pair:
    """2x up-sampling with EDM's transposed resample filter ``taps`` (``[1, 1]``: nearest
    neighbour); linear.

    ``y = conv_transpose2d(x, 4 f f^T / (sum f)^2, stride 2, padding (K - 1) // 2)`` per channel.
    Shapes: ``[B, C, H, W] -> [B, C, 2H, 2W]``.
    """
    y = _up(x, taps)
    if dx is None:
        return y, None
    with torch.no_grad():
        return y, _up(dx, taps)


# ----------------------------------------------------------------------------------------------
# Normalisation.


# The Jacobian of a normalisation y_hat = (x - <x>) r is r (I - 11^T/n - y_hat y_hat^T / n), a
# symmetric matrix, so the tangent J dx equals the vector-Jacobian product J^T dx: the fused
# backward kernels compute it in one pass from the primal's saved mean and rstd.
_aten = torch.ops.aten


def layer_norm(
    x: Tensor,
    dx: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-6,
) -> Pair:
    """Layer normalisation over the last axis, ``y = (x - mean) / sqrt(var + eps) * w + b``.

    Tangent: ``dy = w . r (dxc - y_hat <y_hat dxc>)`` with ``dxc = dx - <dx>``, evaluated with
    the fused layer-norm backward kernel (valid because the Jacobian of the normalisation is
    symmetric) and the primal's mean and ``r = 1/sqrt(var + eps)``.

    Args:
        x: input ``[..., D]``.
        dx: tangent or None.
        weight, bias: optional affine parameters ``[D]``.
        eps: variance epsilon.

    Returns:
        ``(y, dy)`` of shape ``[..., D]``.
    """
    shape = x.shape[-1:]
    if dx is None:
        return F.layer_norm(x, shape, weight, bias, eps), None
    y, mean, rstd = _aten.native_layer_norm(x, shape, weight, bias, eps)
    with torch.no_grad():
        dy = _aten.native_layer_norm_backward(
            dx.to(x.dtype), lead(x, dx), shape, lead(mean, dx), lead(rstd, dx), None, None,
            [True, False, False],
        )[0]
        if weight is not None:
            dy = dy * weight
    return y, dy


def group_norm(
    x: Tensor,
    dx: Tensor | None,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Pair:
    """Group normalisation written from elementary ops (so ``torch.compile`` can trace its JVP).

    ``x [B, C, *S]`` is split into ``G`` groups of ``C/G`` channels; each group is normalised
    over its channels and all spatial positions, then ``y = y_hat * w[c] + b[c]``. The tangent
    is the same formula as for :func:`layer_norm`, per group, via the fused backward kernel.

    Args:
        x: input ``[B, C, *S]``.
        dx: tangent or None.
        num_groups: ``G``, must divide ``C``.
        weight, bias: optional per-channel affine parameters ``[C]``.
        eps: variance epsilon.

    Returns:
        ``(y, dy)`` of shape ``[B, C, *S]``, in float32 for half inputs: the statistics and the
        output are computed in at least float32, as ``F.group_norm`` does under autocast (GPU
        autocast would otherwise mix a bf16 mean with a float32 ``rsqrt``).
    """
    b, c = x.shape[:2]
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    xg = x.reshape(b, num_groups, -1)
    var, mean = torch.var_mean(xg, dim=-1, keepdim=True, correction=0)
    rstd = torch.rsqrt(var + eps)
    affine_shape = (1, c) + (1,) * (x.dim() - 2)
    y = ((xg - mean) * rstd).reshape(x.shape)
    if weight is not None:
        y = y * weight.reshape(affine_shape)
    if bias is not None:
        y = y + bias.reshape(affine_shape)
    if dx is None:
        return y, None
    with torch.no_grad():
        hw = xg.shape[-1] * num_groups // c
        n = dx.shape[0]
        dy = _aten.native_group_norm_backward(
            dx.to(x.dtype).contiguous(), lead(x, dx).contiguous(), lead(mean, dx).reshape(n, num_groups),
            lead(rstd, dx).reshape(n, num_groups), None, n, c, hw, num_groups, [True, False, False],
        )[0]
        if weight is not None:
            dy = dy * weight.reshape(affine_shape)
    return y, dy


class GroupNorm(nn.Module):
    """Parameter holder for :func:`group_norm` with EDM's group rule ``G = min(32, C // 4)``.

    Args:
        num_channels: ``C``.
        num_groups: upper bound on ``G``.
        min_channels_per_group: lower bound on ``C / G``.
        eps: variance epsilon.
    """

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5):
        super().__init__()
        g = max(1, min(num_groups, num_channels // min_channels_per_group))
        while num_channels % g:
            g -= 1
        self.num_groups = g
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor, dx: Tensor | None = None) -> Pair:
        """``(x, dx) -> (y, dy)``, shapes ``[B, C, *S]``."""
        return group_norm(x, dx, self.num_groups, self.weight, self.bias, self.eps)


# ----------------------------------------------------------------------------------------------
# Pointwise ops.


def silu(x: Tensor, dx: Tensor | None = None) -> Pair:
    """``y = x sigmoid(x)``; ``dy = dx . s (1 + x (1 - s))`` with ``s = sigmoid(x)``.

    For a pointwise ``f`` the tangent ``f'(x) dx`` equals the backward ``dx f'(x)``, so the
    fused backward kernel computes it in one pass.
    """
    y = F.silu(x)
    if dx is None:
        return y, None
    with torch.no_grad():
        return y, torch.ops.aten.silu_backward(dx.to(x.dtype), lead(x, dx))


def gelu_tanh(x: Tensor, dx: Tensor | None = None) -> Pair:
    """Tanh-approximated GELU ``y = x/2 (1 + tanh(u))``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``.

    ``dy = gelu'(x) . dx`` (fused backward kernel, as in :func:`silu`).
    """
    y = F.gelu(x, approximate="tanh")
    if dx is None:
        return y, None
    with torch.no_grad():
        return y, torch.ops.aten.gelu_backward(dx.to(x.dtype), lead(x, dx), approximate="tanh")


def modulate(
    x: Tensor, dx: Tensor | None, shift: Tensor, dshift: Tensor | None, scale: Tensor,
    dscale: Tensor | None,
) -> Pair:
    """adaLN modulation ``y = x (1 + scale) + shift`` (scale/shift broadcast against ``x``).

    ``dy = dx (1 + scale) + x dscale + dshift``. The tangent is on when ``dx`` is given;
    ``dshift`` and ``dscale`` must then be given too.
    """
    y = torch.addcmul(shift, x, 1 + scale)
    if dx is None:
        return y, None
    with torch.no_grad():
        dy = torch.addcmul(torch.addcmul(dshift, lead(x, dx), dscale), dx, 1 + lead(scale, dx))
    return y, dy


def mul(a: Tensor, da: Tensor | None, b: Tensor, db: Tensor | None) -> Pair:
    """Product rule ``y = a b``, ``dy = da b + a db`` (broadcasting)."""
    y = a * b
    if da is None:
        return y, None
    with torch.no_grad():
        return y, torch.addcmul(da * lead(b, da), lead(a, da), db)


def dropout(x: Tensor, dx: Tensor | None, p: float, training: bool) -> Pair:
    """Inverted dropout with one explicit mask shared by primal and tangent.

    ``y = x . m / (1 - p)``, ``dy = dx . m / (1 - p)``, ``m ~ Bernoulli(1 - p)``. The mask is
    drawn with one ``torch.rand`` of ``x``'s shape, so equal RNG states give equal masks (also
    between the plain and the tangent path).
    """
    if not training or p == 0.0:
        return x, dx
    keep = torch.rand(x.shape, dtype=x.dtype, device=x.device) >= p
    mask = keep.to(x.dtype) * (1.0 / (1.0 - p))
    y = x * mask
    if dx is None:
        return y, None
    with torch.no_grad():
        return y, dx * lead(mask, dx)


# ----------------------------------------------------------------------------------------------
# Attention.


def merge_heads(x: Tensor, dx: Tensor | None = None) -> Pair:
    """Heads back into channels: ``[B, H, N, d] -> [B, N, H d]`` (a reshape: the tangent the same)."""
    _, h, n, d = x.shape

    def merge(t: Tensor) -> Tensor:
        return t.transpose(1, 2).reshape(t.shape[0], n, h * d)

    return merge(x), None if dx is None else merge(dx)


def attention(
    q: Tensor, k: Tensor, v: Tensor,
    dq: Tensor | None = None, dk: Tensor | None = None, dv: Tensor | None = None,
) -> Pair:
    """Scaled dot-product attention ``O = softmax(q k^T / sqrt(d)) v`` with its tangent.

    The primal uses the fused ``F.scaled_dot_product_attention``, except under forward-mode AD
    (``torch.func.jvp``, ``forward_ad``), where fused kernels have no derivative rule and the
    explicit formula is used instead. The tangent (under ``no_grad``, reusing the primal output
    ``O``) is `attention_tangent.attention_tangent`::

        dS = (dq k^T + q dk^T) / sqrt(d)
        dO = (P . dS) V - rowsum(P . dS) O + P dV

    computed without the ``[B, H, N, M]`` matrices for many tokens (a tiled walk over the keys with
    online-softmax statistics, or a fused Triton kernel on CUDA).

    Args:
        q, k, v: ``[B, H, N, d]`` (``k``/``v`` may have a different token count ``M``).
        dq, dk, dv: tangents (all given or all None).

    Returns:
        ``(O, dO)``: ``[B, H, N, d]`` and ``[n, H, N, d]`` for tangents of the leading ``n`` rows.
    """
    scale = q.shape[-1] ** -0.5
    if _forward_ad_active():
        o = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v
    else:
        o = F.scaled_dot_product_attention(q, k, v)
    if dq is None:
        return o, None
    return o, attention_tangent(*(lead(a, dq) for a in (q, k, v, o.detach())), dq, dk, dv)
