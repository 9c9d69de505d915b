"""The update: the optimizer, and the one guarded step that changes the trained state.

Once a step's gradients are accumulated, `apply_update` clips (or measures) the global gradient norm
``||g||_2``, lets the non-finite guard judge the step from the summed loss and that norm, steps the
optimizer unless the guard's 0-dim ``skip`` flag says no, clears the gradients, and moves the EMAs
and the method's target network masked by the same flag. Nothing here syncs with the host.
"""

from __future__ import annotations

import torch
from torch import nn

from meanflow.methods.base import Progress
from meanflow.training import fsdp
from meanflow.training.ema import EMA
from meanflow.training.nonfinite import NonFiniteGuard
from meanflow.training.target import TargetNetwork


def build_optimizer(net: nn.Module, tc) -> torch.optim.Optimizer:
    """Adam or AdamW, fused where the device has the kernel (CPU, CUDA): the fused kernels read the
    non-finite guard's flag (`found_inf`) on the device and skip a bad step without a host sync; RAdam
    (no fused kernel: the guard skips on the host); Muon for the matrices with Nesterov Adam for the
    rest (`meanflow.training.muon`, pMF; no fused kernel either)."""
    kw = dict(lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay, eps=tc.eps)
    if tc.optimizer == "muon":
        from meanflow.training.muon import MuonAdam

        return MuonAdam(net, momentum=tc.muon_momentum, **kw)
    if tc.optimizer == "radam":
        return torch.optim.RAdam(net.parameters(), **kw)
    opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    try:
        return opt_cls(net.parameters(), fused=True, **kw)
    except RuntimeError:  # no fused kernel for this device / dtype
        return opt_cls(net.parameters(), **kw)


def optimizer_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """`optimizer.step()` unless `skip` (0-dim, 1.0 = skip): inside the fused kernel, else on the host."""
    if all(g.get("fused") for g in optimizer.param_groups):
        optimizer.grad_scale, optimizer.found_inf = None, skip
        optimizer.step()
    elif not skip.item():
        optimizer.step()


def apply_update(net: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None,
                 guard: NonFiniteGuard, loss: torch.Tensor, step: int, ema: EMA, target: TargetNetwork | None,
                 method, progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    """The one optimizer step of the loop, once the gradients of the step are accumulated.

    Clip (or measure) the global gradient norm, let the non-finite guard judge step `step + 1` from
    its loss and norm, step the optimizer unless the guard says skip, clear the gradients, then move
    the EMAs and the method's target network (decay `method.target_decay(progress)`), both masked by
    the same skip flag. Returns ``(skip, grad_norm)``, 0-dim tensors on the device (no host sync).
    """
    if grad_clip is not None:
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    else:
        gnorm = torch.nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
    gnorm = fsdp.full(gnorm)  # FSDP: the norm of the whole gradient, the same on every rank
    skip = guard.observe(step + 1, loss, gnorm)
    optimizer_step(optimizer, skip)
    optimizer.zero_grad(set_to_none=True)
    ema.update(net, skip)
    if target is not None:
        target.update(net, method.target_decay(progress), skip)
    return skip, gnorm
