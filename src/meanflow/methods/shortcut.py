"""Shortcut models (Frans, Hafner, Levine, Abbeel, ICLR 2025): condition on the step size, bootstrap.

The network also takes the size ``d`` of the step it is asked to take. Here, in this project's time
(t = 0 data, t = 1 noise, ``z_t = (1 - t) x + t e``), the shortcut ``s(z_t, t, d)`` is the average
velocity over ``[t - d, t]`` and one step is

    z_{t-d} = z_t - d s(z_t, t, d).

``d`` is passed as the network's second time input ``h``: a shortcut net is called exactly like a
MeanFlow net, ``net(z, t, h = t - r = d, y)``. The paper and its code run time the other way (noise
at 0, data at 1, ``x_{t+d} = x_t + d s(x_t, t, d)``); their time ``t'`` is ``1 - t`` here and their
shortcut is minus this one, so the formulas below are theirs with the signs and times turned round.

Loss, on one batch (``M = max_steps``, 128 in the paper):

* flow matching on a ``1 - bootstrap_fraction`` share of the rows: ``||s(z_t, t, d_fm) - (e - x)||^2``
  with ``d_fm = 0`` (paper) or ``1/M`` (reference code), ``t ~ U(0, 1)`` (paper: plain uniform t does as
  well as the other schemes it tried) or ``t`` on the grid ``{1/M, ..., 1}`` (reference code);
* self-consistency on the other rows: ``d = 2^-k`` with the level drawn uniformly from the
  ``log2(M)`` values giving ``1/M <= d <= 1/2``, ``t`` uniform on ``{2d, 4d, ..., 1}`` (the points a
  sampler with steps of ``2d`` visits, so ``t - 2d >= 0``), and

      s_1 = s_tgt(z_t, t, d),   z' = z_t - d s_1,   s_2 = s_tgt(z', t - d, d),
      ||s(z_t, t, 2d) - stopgrad(clip((s_1 + s_2) / 2))||^2,

  where ``s_tgt`` is the target network (an EMA copy, decay 0.999 in the reference code) or the
  online network without gradient. As in the paper, the finest half step ``d = 1/M`` queries the
  network at ``d_fm`` (the flow-matching input: 0 by default); an M-step sampler does the same.

Errors are summed over non-batch dims and averaged over the batch, flow-matching and bootstrap rows
alike (the reduction of :mod:`~meanflow.methods.flow_matching`).

Left as in this module rather than the reference code: the code gives every level of ``d`` an equal
share of the bootstrap rows (here each row draws its level), clips the intermediate point ``z'`` to
``[-4, 4]`` as well as the target, and can fold classifier-free guidance into the targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.methods.base import (
    LossOutput,
    Method,
    NoiseSource,
    Progress,
    check_override,
    expand_like,
    interpolate,
    per_sample_sq,
)

FM_DS = ("zero", "smallest")
FM_TIMES = ("uniform", "grid")
TARGET_SOURCES = ("target", "online")


class _Needs:
    """``ShortcutModel.needs``: ``{"target"}`` with ``target_source="target"``, else nothing, read per
    instance so the loop keeps a target network only when it is used; on the class, the default's."""

    def __get__(self, obj, cls=None) -> frozenset[str]:
        source = "target" if obj is None else obj.target_source
        return frozenset({"target"}) if source == "target" else frozenset()


@dataclass
class ShortcutModel(Method):
    """Shortcut-model objective and its power-of-two-step sampler.

    Defaults follow the paper (ImageNet-256 settings) where it states a value, else the reference
    code (kvfrans/shortcut-models); each option names the other choice where they differ.

    Attributes:
        max_steps: M, the finest step is ``1/M``; a power of two >= 2 (paper and code: 128).
        bootstrap_fraction: Share of each batch trained on self-consistency targets, the rest on
            flow matching (paper: 0.25; the code bootstraps 1/8 of the batch, ``bootstrap_every = 8``).
        fm_d: Step-size input of the flow-matching rows: ``"zero"`` (paper, d = 0) or ``"smallest"``
            (code, d = 1/M).
        fm_time: t of the flow-matching rows: ``"uniform"`` (paper, U(0, 1)) or ``"grid"`` (code, t
            uniform on ``{1/M, 2/M, ..., 1}``).
        target_source: Network giving the bootstrap targets: ``"target"`` (paper and code, an EMA
            copy kept by the training loop) or ``"online"`` (the network being trained, no gradient).
        target_ema: EMA decay of the target network (code: ``target_update_rate = 0.999``).
        target_clip: Bootstrap targets are clipped to ``[-target_clip, target_clip]`` (code: 4.0;
            ``None`` disables).
        class_dropout: Probability of replacing a label by the null class, on every row (the code
            drops labels on the flow-matching rows only; it uses 0.1 on ImageNet).
        num_classes: Number of real classes; the null class id is ``num_classes``. 0 = unconditional.
    """

    max_steps: int = 128
    bootstrap_fraction: float = 0.25
    fm_d: str = "zero"
    fm_time: str = "uniform"
    target_source: str = "target"
    target_ema: float = 0.999
    target_clip: float | None = 4.0
    class_dropout: float = 0.0
    num_classes: int = 0

    needs = _Needs()  # type: ignore[assignment]
    default_steps: ClassVar[int] = 1

    def __post_init__(self) -> None:
        m = self.max_steps
        if isinstance(m, bool) or int(m) != m or m < 2 or (int(m) & (int(m) - 1)) != 0:
            raise UserError(f"max_steps must be a power of two >= 2, got {m}")
        self.max_steps = int(m)
        if not 0.0 <= self.bootstrap_fraction <= 1.0:
            raise UserError(f"bootstrap_fraction must be in [0, 1], got {self.bootstrap_fraction}")
        if self.fm_d not in FM_DS:
            raise UserError(f"unknown fm_d {self.fm_d!r}; choose from {', '.join(FM_DS)}")
        if self.fm_time not in FM_TIMES:
            raise UserError(f"unknown fm_time {self.fm_time!r}; choose from {', '.join(FM_TIMES)}")
        if self.target_source not in TARGET_SOURCES:
            raise UserError(
                f"unknown target_source {self.target_source!r}; choose from {', '.join(TARGET_SOURCES)}"
            )
        if not 0.0 <= self.target_ema <= 1.0:
            raise UserError(f"target_ema must be in [0, 1], got {self.target_ema}")
        if self.target_clip is not None and not self.target_clip > 0:
            raise UserError(f"target_clip must be > 0 or None, got {self.target_clip}")
        if not 0.0 <= self.class_dropout <= 1.0:
            raise UserError(f"class_dropout must be in [0, 1], got {self.class_dropout}")
        if int(self.num_classes) != self.num_classes or self.num_classes < 0:
            raise UserError(f"num_classes must be an integer >= 0, got {self.num_classes}")
        if self.num_classes == 0 and self.class_dropout > 0:
            raise UserError("class_dropout needs num_classes > 0")


    def target_decay(self, progress: Progress) -> float:
        """Constant EMA decay ``target_ema`` of the target network (``target_source="target"``)."""
        return self.target_ema

    @property
    def fm_h(self) -> float:
        """Step-size input of flow matching: 0 (``fm_d="zero"``) or ``1/M`` (``"smallest"``)."""
        return 0.0 if self.fm_d == "zero" else 1.0 / self.max_steps

    def query_h(self, d: Tensor) -> Tensor:
        """Network input for a step of size ``d`` ``[B]``: ``d``, except ``d = 1/M`` maps to :attr:`fm_h`
        (the finest shortcut is flow matching: the paper queries the model at d = 0 for the smallest d)."""
        return torch.where(d <= 1.0 / self.max_steps, torch.full_like(d, self.fm_h), d)

    # ------------------------------------------------------------------ training

    def sample_bootstrap(self, n: int, device=None, dtype=torch.float32,
                         generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``(t, d)`` for ``n`` self-consistency rows, each ``[n]``.

        ``2d = 2^-j`` with ``j`` uniform on ``{0, ..., log2(M) - 1}`` (so ``d`` is in ``[1/M, 1/2]``) and
        ``t = i * 2d`` with ``i`` uniform on ``{1, ..., 1/(2d)}``.
        """
        levels = int(math.log2(self.max_steps))
        j = torch.randint(0, levels, (n,), device=device, generator=generator)
        cells = torch.pow(2.0, j.to(torch.float64))  # 1 / (2d): grid points in (0, 1]
        i = torch.floor(torch.rand(n, device=device, dtype=torch.float64, generator=generator) * cells) + 1
        two_d = 1.0 / cells
        return (i * two_d).to(dtype), (0.5 * two_d).to(dtype)

    def sample_fm_time(self, n: int, device=None, dtype=torch.float32,
                       generator: torch.Generator | None = None) -> Tensor:
        """Draw ``t`` ``[n]`` for flow-matching rows (see ``fm_time``)."""
        if self.fm_time == "uniform":
            return torch.rand(n, device=device, dtype=dtype, generator=generator)
        k = torch.randint(1, self.max_steps + 1, (n,), device=device, generator=generator)
        return (k.to(torch.float64) / self.max_steps).to(dtype)

    @torch.no_grad()
    def bootstrap_target(self, net: nn.Module, z: Tensor, t: Tensor, d: Tensor, y: Tensor | None = None,
                         net_kwargs: dict | None = None) -> Tensor:
        """Self-consistency target for ``s(z, t, 2d)`` from two half steps of ``net`` (no gradient).

        ``s_1 = net(z, t, d)``, ``z' = z - d s_1``, ``s_2 = net(z', t - d, d)``, target
        ``clip((s_1 + s_2) / 2, -target_clip, target_clip)`` (``d`` enters the network through
        :meth:`query_h`).

        Args:
            net: Network giving the targets (the target network, or the online one).
            z: ``[n, *S]`` at time ``t``.
            t: ``[n]``, ``t - 2d >= 0``.
            d: Half step ``[n]``.
            y: Class ids ``[n]`` or ``None``.
            net_kwargs: Extra keyword inputs of the network (rows matching ``z``).

        Returns:
            Detached target ``[n, *S]`` in ``z``'s dtype.
        """
        kw = net_kwargs or {}
        h = self.query_h(d)
        s1 = net(z, t, h, y, **kw).to(z.dtype)
        z_mid = z - expand_like(d, z) * s1
        s2 = net(z_mid, t - d, h, y, **kw).to(z.dtype)
        target = 0.5 * (s1 + s2)
        if self.target_clip is not None:
            target = target.clamp(-self.target_clip, self.target_clip)
        return target

    def loss(
        self,
        net: nn.Module,
        x: Tensor,
        y: Tensor | None = None,
        *,
        noise: Tensor | None = None,
        t: Tensor | None = None,
        r: Tensor | None = None,
        net_kwargs: dict | None = None,
        target: nn.Module | None = None,
    ) -> LossOutput:
        """Flow matching plus self-consistency on one batch (paper Algorithm 1, time reversed).

        Rows with ``r = t`` are flow-matching rows, rows with ``r < t`` bootstrap the shortcut over
        ``[r, t]`` (``2d = t - r``). Without overrides the first ``round(bootstrap_fraction * B)`` rows
        bootstrap with ``(t, d)`` from :meth:`sample_bootstrap`, the rest draw ``t`` by ``fm_time``.
        One online forward covers all rows; the targets cost two forwards of the bootstrap rows.

        Args:
            net: Network ``net(z, t, h, y)``, possibly DDP-wrapped.
            x: Data ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            noise: Optional fixed noise ``[B, *S]``.
            t: Optional fixed times ``[B]``. If only one of ``t``/``r`` is given the other equals it
                (then every row is a flow-matching row).
            r: Optional fixed ``r = t - 2d`` ``[B]``: ``r = t`` or ``t - r`` a power of two in
                ``[2/M, 1]``, and ``r >= 0``.
            net_kwargs: Extra keyword inputs passed to every network call; per-sample tensors
                (leading dim B) are cut to the bootstrap rows for the target forwards.
            target: The target network (training context ``"target"``); required with
                ``target_source="target"``.

        Returns:
            :class:`LossOutput` with metrics ``loss``, ``fm_loss`` and ``sc_loss`` (mean error over the
            flow-matching and bootstrap rows, 0 where there are none) and ``frac_bootstrap``.
        """
        b = x.shape[0]
        check_override("noise", noise, tuple(x.shape))
        check_override("t", t, (b,))
        check_override("r", r, (b,))
        if self.target_source == "target" and target is None:
            raise UserError("target_source='target' needs the target network: pass target=... "
                            "(the training loop does)")
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 in tests
        x = x.to(dtype)
        t, d, rows = self._times(b, t, r, x.device, dtype)
        boot, n = d > 0, rows.numel()
        kw = net_kwargs or {}

        e = torch.randn_like(x) if noise is None else noise.to(x.device, dtype)
        z, v = interpolate(x, e, t)
        if y is not None and self.num_classes > 0 and self.class_dropout > 0:
            drop = torch.rand(b, device=x.device) < self.class_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)

        goal = v
        if n > 0:
            source = target if self.target_source == "target" else net
            y_b = None if y is None else y[rows]
            kw_b = {k: _rows(val, rows, b) for k, val in kw.items()}
            sc = self.bootstrap_target(source, z[rows], t[rows], d[rows], y_b, kw_b)
            goal = v.index_copy(0, rows, sc.to(dtype))

        h = torch.where(boot, 2 * d, torch.full_like(d, self.fm_h))
        pred = net(z, t, h, y, **kw)
        err = per_sample_sq(pred.to(dtype) - goal.detach())
        loss = err.mean()

        return LossOutput(loss=loss, metrics=_metrics(loss, err, boot, n))

    def _times(self, b: int, t: Tensor | None, r: Tensor | None, device,
               dtype) -> tuple[Tensor, Tensor, Tensor]:
        """``(t [B], d [B], rows [n])``: the times, the half steps (``d > 0`` on the ``n`` bootstrap
        rows, 0 on the flow-matching rows) and the bootstrap rows' indices. Drawn (:meth:`_draw`: the
        bootstrap rows are the first ``n``, known on the host, so no device sync), or from the
        overrides (``2d = t - r``, checked by :meth:`_check_pairs`)."""
        if t is None and r is None:
            t, d = self._draw(b, device, dtype)
            return t, d, torch.arange(int(round(self.bootstrap_fraction * b)), device=device)
        t = (r if t is None else t).to(device, dtype)
        r = t if r is None else r.to(device, dtype)
        d = self._check_pairs(t, r)
        return t, d, (d > 0).nonzero().squeeze(1)

    def _draw(self, b: int, device, dtype) -> tuple[Tensor, Tensor]:
        """``(t, d)`` ``[B]``: bootstrap rows first (``d > 0``), then flow-matching rows (``d = 0``)."""
        n = int(round(self.bootstrap_fraction * b))
        t_sc, d_sc = self.sample_bootstrap(n, device=device, dtype=dtype)
        t_fm = self.sample_fm_time(b - n, device=device, dtype=dtype)
        return torch.cat([t_sc, t_fm]), torch.cat([d_sc, torch.zeros_like(t_fm)])

    def _check_pairs(self, t: Tensor, r: Tensor) -> Tensor:
        """Half step ``d`` ``[B]`` of overridden ``(t, r)`` (0 where ``r = t``), validated."""
        two_d = (t - r).to(torch.float64)
        if bool((two_d < 0).any()) or bool((r < -1e-6).any()) or bool((t > 1 + 1e-6).any()):
            raise UserError("need 0 <= r <= t <= 1 for every sample")
        boot = two_d > 0
        j = torch.round(-torch.log2(two_d[boot]))
        levels = int(math.log2(self.max_steps))
        exact = torch.pow(2.0, -j)
        if bool(((j < 0) | (j >= levels) | ((two_d[boot] - exact).abs() > 1e-6)).any()):
            raise UserError(f"t - r must be 0 or a power of two in [{2 / self.max_steps}, 1]")
        d = torch.zeros_like(two_d)
        d[boot] = 0.5 * exact
        return d.to(t.dtype)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        net: nn.Module,
        noise: Tensor,
        y: Tensor | None = None,
        steps: int = 1,
        schedule: Tensor | None = None,
        *,
        net_kwargs: dict | None = None,
        generator: NoiseSource = None,
    ) -> Tensor:
        """``steps`` equal shortcut steps from t = 1 to 0: ``z <- z - d s(z, t, d)``, ``d = 1/steps``.

        With ``steps = M`` the network is queried at ``fm_h`` (see :meth:`query_h`).

        Args:
            net: Network.
            noise: ``e ~ N(0, I)``, ``[B, *S]``.
            y: Class ids ``[B]`` or ``None``.
            steps: A power of two in ``[1, max_steps]``.
            schedule: Not supported (must be ``None``): shortcuts exist for uniform power-of-two grids.
            net_kwargs: Extra keyword inputs passed unchanged to every network call.
            generator: Unused (the sampler is deterministic given the noise).

        Returns:
            Samples ``[B, *S]``.
        """
        if schedule is not None:
            raise UserError("shortcut models sample on a uniform grid only; give steps, not schedule")
        if isinstance(steps, bool) or int(steps) != steps or steps < 1 or (int(steps) & (int(steps) - 1)):
            raise UserError(f"steps must be a power of two, got {steps}")
        if steps > self.max_steps:
            raise UserError(f"steps must be <= max_steps = {self.max_steps}, got {steps}")
        steps = int(steps)
        kw = net_kwargs or {}
        b = noise.shape[0]
        d = torch.full((b,), 1.0 / steps, dtype=noise.dtype, device=noise.device)
        h = self.query_h(d)
        z = noise
        for i in range(steps):
            t = torch.full_like(d, (steps - i) / steps)
            z = z - expand_like(d, z) * net(z, t, h, y, **kw).to(z.dtype)
        return z


def _rows(value, rows: Tensor, b: int):
    """``value[rows]`` for a per-sample tensor (leading dim ``b``); anything else unchanged."""
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == b:
        return value[rows]
    return value


@torch.no_grad()
def _metrics(loss: Tensor, err: Tensor, boot: Tensor, n: int) -> dict[str, Tensor]:
    """``loss``, ``fm_loss`` / ``sc_loss`` (mean of the per-row errors ``err [B]`` over the
    flow-matching / bootstrap rows, 0 where there are none) and ``frac_bootstrap`` (``n / B``)."""
    b = err.shape[0]
    w_sc = boot.to(err.dtype)
    sums = torch.stack([(err * (1 - w_sc)).sum(), (err * w_sc).sum()])
    counts = torch.tensor([float(b - n), float(n)], device=err.device, dtype=err.dtype)
    means = sums / counts.clamp_min(1)  # 0 where a kind has no rows
    return {"loss": loss.detach(), "fm_loss": means[0], "sc_loss": means[1], "frac_bootstrap": counts[1] / b}
