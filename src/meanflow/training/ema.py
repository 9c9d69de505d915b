"""Exponential moving averages of the weights, several at once: by constant decay or by half-life.

Under FSDP the shadows are shards laid out like the weights (1/N of the memory per rank); the loop
gathers them for checkpoints and sample grids (`training.fsdp`).

`shadow <- d_n * shadow + (1 - d_n) * param` after optimizer update n (1-based), in float32 for every
floating-point parameter; buffers (e.g. running statistics) are copied as they are. Each EMA has a key:

* a constant decay ``d`` (a float, e.g. 0.9999): ``d_n = d``, or with warm-up ``min(d, (1 + n) / (10 + n))``;
* a half-life of ``H`` thousand images (a name, ``"<H>kimg"``), EDM's schedule as pMF uses it
  (``utils/ema_util.py:9-16`` of github.com/Lyy-iiis/pMF, there with B = 1024 and r = 0.05)::

      T_n = min(1000 H, n B r)        (no ramp, r = None: T_n = 1000 H)
      d_n = 0.5 ** (B / max(T_n, 1e-8))

  with B the global batch size: the average halves its weight on the past every T_n images. `d_n`
  is a function of the update count n (= the step), so a resumed run continues it exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from meanflow.training import fsdp

HALFLIFE_SUFFIX = "kimg"


def halflife_name(kimg: float) -> str:
    """Key of the EMA with half-life `kimg` thousand images: ``500 -> "500kimg"``, ``0.1 -> "0.1kimg"``
    (the float's shortest exact form, without a trailing ``.0``)."""
    text = repr(float(kimg))
    return (text[:-2] if text.endswith(".0") else text) + HALFLIFE_SUFFIX


def parse_halflife(name: str) -> float | None:
    """The half-life in kimg of a key such as ``"500kimg"`` (case-insensitive), else None."""
    if not isinstance(name, str) or not name.lower().endswith(HALFLIFE_SUFFIX):
        return None
    try:
        value = float(name[:-len(HALFLIFE_SUFFIX)])
    except ValueError:
        return None
    return value if 0.0 < value < math.inf else None


def halflife_decay(kimg: float, n: int, batch_size: int, rampup: float | None) -> float:
    """``d_n = 0.5 ** (B / max(T_n, 1e-8))``, ``T_n = min(1000 kimg, n B rampup)`` (module docstring)."""
    images = 1000.0 * kimg
    if rampup is not None:
        images = min(images, n * batch_size * rampup)
    return 0.5 ** (batch_size / max(images, 1e-8))


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP DTensor, else `t`."""
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    """Shadow copies of `net`'s state, one per key (module docstring).

    Args:
        net: the (unwrapped) network whose `state_dict()` is tracked.
        decays: e.g. [0.9999, 0.99995, 0.9996].
        warmup: use min(decay, (1 + n) / (10 + n)) at update n, so that the average forgets the
            random initialisation within a short run (the papers' long runs use the constant decay).
        halflives_kimg: half-lives in thousands of images, e.g. [500, 1000, 2000] (keys '500kimg', ...).
        batch_size: images per update (the global batch), B of the half-life schedule.
        rampup: the half-life ramp r (None: none).
    """

    def __init__(self, net: nn.Module, decays: list[float], warmup: bool = False,
                 halflives_kimg: list[float] = (), batch_size: int = 1, rampup: float | None = 0.05) -> None:
        self.decays = [float(d) for d in decays]
        self.halflives = {halflife_name(h): float(h) for h in halflives_kimg}
        self.warmup = warmup
        self.batch_size, self.rampup = int(batch_size), rampup
        self.num_updates = 0
        state = net.state_dict()
        self.shadows: dict[float | str, dict[str, torch.Tensor]] = {
            key: {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                  for k, v in state.items()}
            for key in [*self.decays, *self.halflives]
        }

    def decay(self, key: float | str, n: int) -> float:
        """``d_n`` of EMA `key` at update `n` (1-based; module docstring)."""
        if key in self.halflives:
            return halflife_decay(self.halflives[key], n, self.batch_size, self.rampup)
        if self.warmup:  # short runs: do not let the random init linger in the average
            return min(key, (1.0 + n) / (10.0 + n))
        return key

    @torch.no_grad()
    def update(self, net: nn.Module, skip: torch.Tensor | None = None) -> None:
        """One EMA step after an optimizer step. `skip` (0-dim float tensor on the weights' device, see
        `meanflow.training.nonfinite`) masks the step without a host sync: 1.0 leaves every shadow as
        it is (`lerp` weight (1 - d) * (1 - skip)); 0.0 is the ordinary update, bit for bit."""
        params = dict(net.named_parameters())
        state = net.state_dict()
        self.num_updates += 1
        keep = None if skip is None else 1.0 - skip
        for key, shadow in self.shadows.items():
            d = self.decay(key, self.num_updates)
            weight = 1.0 - d if keep is None else (1.0 - d) * keep
            for k, v in state.items():
                # FSDP (training.fsdp): shadow and weight are shards of one layout; update the local part.
                sh, v = _local(shadow[k]), _local(v)
                if k in params and v.is_floating_point():
                    sh.lerp_(v.detach().float(), weight)
                elif keep is None:
                    sh.copy_(v)
                else:
                    sh.copy_(torch.where(keep > 0, v.to(sh.dtype), sh))

    def state(self, key: float | str) -> dict[str, torch.Tensor]:
        """Shadow state_dict of one EMA (float32 floating-point tensors)."""
        return self.shadows[_key(key)]

    def copy_to(self, net: nn.Module, key: float | str) -> None:
        """Load the shadow weights of EMA `key` into the full (unsharded) `net`, cast to each tensor's
        device and dtype. Under FSDP the shadow shards are gathered first (collective: every rank calls
        it)."""
        shadow = self.shadows[_key(key)]
        ref = net.state_dict()
        net.load_state_dict({k: fsdp.full(shadow[k]).to(ref[k].device, ref[k].dtype) for k in ref})

    def load(self, key: float | str, tensors: dict[str, torch.Tensor]) -> None:
        shadow = self.shadows[_key(key)]
        missing = set(shadow) - set(tensors)
        if missing:
            raise KeyError(f"EMA {key}: missing {sorted(missing)[:3]}")
        for k in shadow:
            shadow[k].copy_(tensors[k])


def _key(key: float | str) -> float | str:
    """A decay as a float, a half-life name as it is."""
    return key if isinstance(key, str) else float(key)
