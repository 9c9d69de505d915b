"""Exponential moving averages of the weights, several decays at once.

Under FSDP the shadows are shards laid out like the weights (1/N of the memory per rank); the loop
gathers them for checkpoints and sample grids (`training.fsdp`).

`shadow_d <- d * shadow_d + (1 - d) * param` after every optimizer step, in float32 for every
floating-point parameter; buffers (e.g. running statistics) are copied as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from meanflow.training import fsdp


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP DTensor, else `t`."""
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    """Shadow copies of `net`'s state, one per decay.

    Args:
        net: the (unwrapped) network whose `state_dict()` is tracked.
        decays: e.g. [0.9999, 0.99995, 0.9996].
        warmup: use min(decay, (1 + n) / (10 + n)) at update n, so that the average forgets the
            random initialisation within a short run (the papers' long runs use the constant decay).
    """

    def __init__(self, net: nn.Module, decays: list[float], warmup: bool = False) -> None:
        self.decays = [float(d) for d in decays]
        self.warmup = warmup
        self.num_updates = 0
        state = net.state_dict()
        self.shadows: dict[float, dict[str, torch.Tensor]] = {
            d: {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                for k, v in state.items()}
            for d in self.decays
        }

    @torch.no_grad()
    def update(self, net: nn.Module, skip: torch.Tensor | None = None) -> None:
        """One EMA step after an optimizer step. `skip` (0-dim float tensor on the weights' device, see
        `meanflow.training.nonfinite`) masks the step without a host sync: 1.0 leaves every shadow as
        it is (`lerp` weight (1 - d) * (1 - skip)); 0.0 is the ordinary update, bit for bit."""
        params = dict(net.named_parameters())
        state = net.state_dict()
        self.num_updates += 1
        keep = None if skip is None else 1.0 - skip
        for d, shadow in self.shadows.items():
            if self.warmup:  # short runs: do not let the random init linger in the average
                d = min(d, (1.0 + self.num_updates) / (10.0 + self.num_updates))
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

    def state(self, decay: float) -> dict[str, torch.Tensor]:
        """Shadow state_dict of one decay (float32 floating-point tensors)."""
        return self.shadows[float(decay)]

    def copy_to(self, net: nn.Module, decay: float) -> None:
        """Load the shadow weights of `decay` into the full (unsharded) `net`, cast to each tensor's
        device and dtype. Under FSDP the shadow shards are gathered first (collective: every rank calls
        it)."""
        shadow = self.shadows[float(decay)]
        ref = net.state_dict()
        net.load_state_dict({k: fsdp.full(shadow[k]).to(ref[k].device, ref[k].dtype) for k in ref})

    def load(self, decay: float, tensors: dict[str, torch.Tensor]) -> None:
        shadow = self.shadows[float(decay)]
        missing = set(shadow) - set(tensors)
        if missing:
            raise KeyError(f"EMA {decay}: missing {sorted(missing)[:3]}")
        for k in shadow:
            shadow[k].copy_(tensors[k])
