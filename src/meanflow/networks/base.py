"""The one signature every backbone shares, with its tangent mode.

    out = net(z, t, h, y=None)
    out, dout = net(z, t, h, y=None, tangents=(dz, dt, dh))

``dout = d/de net(z + e dz, t + e dt, h + e dh, y)`` at ``e = 0`` is exact (forward mode, not a
finite difference) and computed without an autograd graph; ``out`` keeps its graph.

The tangents may cover only the *leading* ``n <= B`` rows of the batch (``dz [n, *S]``, ``dt, dh
[n]``): ``out`` is still ``[B, *S]`` and ``dout`` is ``[n, *S]``, the leading rows of the full
tangent, at ``n / B`` of its cost (MeanFlow needs ``du/dt`` only where ``r != t``). Subclasses
implement :meth:`TangentNet.pair_forward`, which threads ``(x, dx)`` pairs through the layers of
:mod:`meanflow.networks.layers` (``dx = None`` everywhere for the plain forward).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.networks.embeddings import batch_scalar


class TangentNet(nn.Module):
    """Base class: input normalisation and the tangent-mode switch.

    Subclasses define ``pair_forward(z, t, h, y, dz, dt, dh, **kwargs) -> (out, dout)``.
    """

    supports_tangents = True
    supports_partial_tangents = True
    """Tangents may cover only the leading rows of the batch (see the module docstring)."""

    def forward(
        self,
        z: Tensor,
        t: Tensor | float,
        h: Tensor | float,
        y: Tensor | None = None,
        tangents: Sequence[Tensor | float] | None = None,
        **kwargs,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Evaluate the network, optionally with its forward-mode derivative.

        Args:
            z: input ``[B, *S]``.
            t: time ``[B]`` (or a scalar, broadcast), ``t = 1`` is noise.
            h: ``h = t - r`` ``[B]`` (or a scalar); 0 for single-time methods.
            y: class ids ``[B]`` long in ``[0, num_classes]`` (``num_classes`` = null) or None.
            tangents: optional ``(dz [n, *S], dt [n] or scalar, dh [n] or scalar)`` for the leading
                ``1 <= n <= B`` rows (usually ``n = B``).
            **kwargs: extra conditioning specific to a backbone (e.g. ``augment_labels``).

        Returns:
            ``out [B, *S]``; or ``(out, dout)`` in tangent mode, ``dout [n, *S]`` without a graph.
        """
        b = z.shape[0]
        t = batch_scalar(t, b, z)
        h = batch_scalar(h, b, z)
        if tangents is None:
            return self.pair_forward(z, t, h, y, None, None, None, **kwargs)[0]
        if len(tangents) != 3:
            raise UserError(f"tangents must be (dz, dt, dh), got {len(tangents)} items")
        dz, dt, dh = tangents
        n = dz.shape[0] if dz.dim() else 0
        if dz.shape[1:] != z.shape[1:] or not 1 <= n <= b:
            raise UserError(f"tangent dz has shape {tuple(dz.shape)}, expected {tuple(z.shape)} "
                            f"(or the leading n >= 1 of its {b} rows)")
        with torch.no_grad():
            dz = dz.to(z.dtype)
            dt = batch_scalar(dt, n, z)
            dh = batch_scalar(dh, n, z)
        out, dout = self.pair_forward(z, t, h, y, dz, dt, dh, **kwargs)
        return out, dout

    def pair_forward(self, z, t, h, y, dz, dt, dh, **kwargs):
        """``(out, dout)``: the forward with its graph and the exact tangent under ``no_grad``.

        Every subclass implements it (an abstract method: ``nn.Module`` is not an ``abc.ABC``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement tangent mode")
