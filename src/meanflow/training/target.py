"""The target network a method may ask for (`needs = {"target", ...}`, see `meanflow.methods.base`).

A copy of the online network that the optimizer never touches. After every optimizer step

    target <- d * target + (1 - d) * net,    d = method.target_decay(progress)

for floating-point parameters (buffers are copied), masked by the non-finite guard's `skip` flag like
the EMAs. Consistency training's EMA teacher and shortcut models' bootstrap network are such
targets. It is a module the method calls (unlike the loop's sampling EMAs, which are weight dicts),
checkpointed under `target/` and resumed bit for bit.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class TargetNetwork:
    """Holds `net`, a frozen copy of the online network, and updates it.

    Args:
        online: the unwrapped online network (its current weights are copied).
    """

    def __init__(self, online: nn.Module) -> None:
        self.net = copy.deepcopy(online).requires_grad_(False)
        self.net.train(online.training)

    @torch.no_grad()
    def update(self, online: nn.Module, decay: float, skip: torch.Tensor | None = None) -> None:
        """One EMA step towards `online`; `skip` (0-dim, 1.0 = leave as is) masks it without a sync."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"target decay must be in [0, 1], got {decay}")
        weight = 1.0 - decay if skip is None else (1.0 - decay) * (1.0 - skip)
        params = dict(online.named_parameters())
        mine = self.net.state_dict()
        for k, v in online.state_dict().items():
            if k in params and v.is_floating_point():
                mine[k].lerp_(v.detach(), weight)
            elif skip is None:
                mine[k].copy_(v)
            else:
                mine[k].copy_(torch.where(skip > 0, mine[k], v))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()
