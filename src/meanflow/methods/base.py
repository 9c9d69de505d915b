"""The interface every method shares: a loss given a network and a batch, a sampler given noise.

A method is a small dataclass of hyper-parameters; it never owns weights. The training loop only
calls :meth:`Method.loss` and :meth:`Method.sample`, so it knows nothing about any one method.

Convention: t = 0 is data, t = 1 is noise, ``z_t = (1 - t) x + t e`` and ``v = e - x``.
Networks are called as ``net(z, t, h, y)`` with ``h = t - r`` (``h = 0`` for single-time methods).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Union

import torch
from torch import Tensor, nn

from meanflow.errors import UserError


@dataclass
class LossOutput:
    """What :meth:`Method.loss` returns.

    Attributes:
        loss: Scalar tensor to call ``backward()`` on.
        metrics: Detached scalars for logging (``"loss"`` always present), as 0-dim tensors so that
            logging does not force a device synchronisation on every step.
    """

    loss: Tensor
    metrics: dict[str, float | Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """Where training stands when a loss is computed (the `progress` context keyword).

    Attributes:
        step: optimizer steps already taken (0 for the first step of a run).
        total: optimizer steps of the whole run.
    """

    step: int
    total: int

    @property
    def fraction(self) -> float:
        """``step / total`` in [0, 1)."""
        return self.step / max(self.total, 1)


CONTEXT_KEYS = ("progress", "target", "teacher")
"""Training context a method may declare in :attr:`Method.needs`; the loop passes exactly those as
keywords to :meth:`Method.loss`:

* ``progress``: a :class:`Progress` (curricula such as consistency training's N(k));
* ``target``: a copy of the network the loop keeps out of the optimizer, updated after every
  optimizer step as ``target <- d * target + (1 - d) * net`` with ``d = method.target_decay(progress)``,
  checkpointed and resumed with the weights;
* ``teacher``: a frozen network loaded from the checkpoint named by ``training.teacher``.
"""


class Method(abc.ABC):
    """Base of all methods: hyper-parameters in, a loss and a sampler out."""

    needs: ClassVar[frozenset[str]] = frozenset()
    """The training context (a subset of :data:`CONTEXT_KEYS`) that :meth:`loss` takes as keywords."""

    default_steps: ClassVar[int] = 1
    """Sampling steps the method is meant to be used with (one-step methods 1, an ODE sampler more):
    the grids drawn during and at the end of training and `meanflow sample` use it unless told."""

    @property
    def grid_steps(self) -> int:
        """Steps of the training run's sample grids and 2-D report (default: `default_steps`; a slow
        sampler, Score SDE, sets fewer)."""
        return self.default_steps

    needs_pairs: ClassVar[bool] = False
    """True for a method that only makes sense on coupled (noise, sample) pairs (reflow, distillation
    of a flow): the loop refuses it on data without a ``noise`` tensor. On data that carries one, the
    loop passes it to every method as the ``noise`` override of :meth:`loss`."""

    @property
    def net_inputs(self) -> tuple[str, ...]:
        """Keyword inputs this method itself passes to every network call besides ``(z, t, h, y)``
        (e.g. ``("guidance",)``, a ``[B, 3]`` tensor, for class-conditional iMF); empty by default.
        The builder (``meanflow.training.build``) turns each into the network option that makes the
        network take it, and refuses a network that has no such option."""
        return ()

    def target_decay(self, progress: Progress) -> float:
        """EMA decay of the target network after the step described by `progress` (methods whose
        :attr:`needs` holds ``"target"`` must override it, which the loop checks before training;
        0 makes the target a copy of the online network)."""
        raise NotImplementedError(f"{type(self).__name__} declares no target network")

    @abc.abstractmethod
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
    ) -> LossOutput:
        """Training loss on one batch.

        Args:
            net: Network ``net(z, t, h, y) -> [B, *S]`` (possibly DDP-wrapped).
            x: Data batch, shape ``[B, *S]``.
            y: Class ids ``[B]`` (long) or ``None``.
            noise: Overrides the Gaussian draw ``e``, shape ``[B, *S]``.
            t: Overrides the time draw, shape ``[B]``.
            r: Overrides the second time draw (two-time methods only), shape ``[B]``.
            net_kwargs: Extra keyword inputs passed unchanged to every network call (e.g.
                ``{"augment_labels": [B, 9]}``); the method never interprets them.

        Returns:
            A :class:`LossOutput`.
        """

    @abc.abstractmethod
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
        """Map noise ``[B, *S]`` at t = 1 to samples ``[B, *S]`` at t = 0.

        ``net_kwargs`` are extra keyword inputs passed unchanged to every network call. A stochastic
        sampler (consistency multistep, SDE samplers) draws its fresh noise with
        :func:`fresh_noise` from ``generator``; deterministic samplers ignore it.
        """


NoiseSource = Union[torch.Generator, "SupportsRandnLike", None]
"""Where a stochastic sampler's fresh noise comes from: a ``torch.Generator``, an object with
``randn_like(x)`` (``meanflow.sampling.SampleNoise``: draw k of sample i depends only on (seed, i, k),
whatever the batch), or ``None`` (the global RNG)."""


class SupportsRandnLike(Protocol):
    def randn_like(self, x: Tensor) -> Tensor: ...


def fresh_noise(like: Tensor, generator: NoiseSource = None) -> Tensor:
    """A new standard normal draw shaped, typed and placed like ``like`` (``[B, *S]``), from
    ``generator`` (see :data:`NoiseSource`)."""
    if generator is None:
        return torch.randn_like(like)
    if isinstance(generator, torch.Generator):
        out = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
        return out.to(like.device)
    return generator.randn_like(like).to(like.device, like.dtype)


def expand_like(a: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample tensor ``[B]`` to ``[B, 1, ..., 1]`` so it broadcasts against ``x``."""
    return a.reshape(a.shape[0], *([1] * (x.ndim - 1)))


def per_sample_sq(d: Tensor) -> Tensor:
    """Squared error summed over all non-batch dims: ``[B, *S] -> [B]``."""
    return d.square().flatten(1).sum(dim=1)


def interpolate(x: Tensor, e: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Linear path: ``z_t = (1 - t) x + t e`` and its conditional velocity ``v = e - x``.

    Args:
        x: Data ``[B, *S]``.
        e: Noise ``[B, *S]``.
        t: Times ``[B]``.

    Returns:
        ``(z_t, v)``, both ``[B, *S]``.
    """
    tb = expand_like(t, x)
    return (1 - tb) * x + tb * e, e - x


def given_times(t: Tensor | None, r: Tensor | None, draw, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(t, r)`` of a two-time method, each ``[B]`` on ``x``'s device and dtype: ``draw()`` when neither
    override is given, else the overrides, a missing one equal to the other; a one-line UserError unless
    ``r <= t`` everywhere."""
    if t is None and r is None:
        t, r = draw()
    else:
        t, r = (r if t is None else t), (t if r is None else r)
        if bool((r > t).any()):
            raise UserError("r must be <= t for every sample")
    return t.to(x.device, x.dtype), r.to(x.device, x.dtype)


def check_override(name: str, value: Tensor | None, shape: tuple[int, ...]) -> None:
    """Raise :class:`UserError` when an override tensor (noise, t, r) has the wrong shape."""
    if value is not None and tuple(value.shape) != tuple(shape):
        raise UserError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")


def resolve_schedule(steps: int, schedule: Tensor | None, device: torch.device) -> Tensor:
    """The time grid a k-step sampler walks, validated.

    Args:
        steps: Number of steps k >= 1. When ``schedule`` is given, ``steps`` must be 1 (the default,
            then the schedule decides) or equal ``len(schedule) - 1``.
        schedule: Optional strictly decreasing 1-D tensor from 1 to 0, length k + 1.
        device: Device of the returned grid.

    Returns:
        Float64 tensor ``[k + 1]`` with ``t_0 = 1 > t_1 > ... > t_k = 0`` (cast it to the samples'
        dtype at use).
    """
    from meanflow.methods.time_sampling import uniform_schedule

    if schedule is None:
        return uniform_schedule(steps, device=device)
    s = torch.as_tensor(schedule, dtype=torch.float64).to(device)
    if s.ndim != 1 or s.numel() < 2:
        raise UserError(f"schedule must be a 1-D tensor of length >= 2, got shape {tuple(s.shape)}")
    if steps != 1 and steps != s.numel() - 1:
        raise UserError(f"schedule has {s.numel() - 1} steps but steps={steps}")
    if not bool((s[1:] < s[:-1]).all()):
        raise UserError("schedule must be strictly decreasing")
    if abs(float(s[0]) - 1.0) > 1e-6 or abs(float(s[-1])) > 1e-6:
        raise UserError(f"schedule must go from 1 to 0, got {float(s[0])} -> {float(s[-1])}")
    return s
