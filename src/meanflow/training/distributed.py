"""A thin distributed layer: the same script runs alone (rank 0 of 1) or under torchrun.

`init()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); without it nothing is
initialised and every helper degrades to the single-process case. NCCL is used on CUDA, gloo on CPU.

Why the wrapper matters (SPEC §4.1): the method must be given the DistributedDataParallel *wrapper*
(`wrap`), never `wrapper.module`: the MeanFlow JVP helper calls the network it is given, and only a
call through the wrapper registers the hooks that all-reduce gradients. Calling `.module` trains each
replica on its own data with no error; `check_replicas` catches that kind of drift at run time.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def env_world_size() -> int:
    """World size announced by torchrun (1 when not launched by it); reads no process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: str) -> DistInfo:
    """Join the process group torchrun describes, if any. `device` is 'cpu' or 'cuda'."""
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if "RANK" not in os.environ or env_world_size() == 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(net: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel wrapper when distributed, else `net` itself. Pass the result (not
    `.module`) to `method.loss` so gradient all-reduce hooks fire (SPEC §4.1)."""
    if not info.enabled:
        return net
    ids = [device.index] if device.type == "cuda" else None
    # `broadcast_buffers=False` (deprecated in torch 2.13, and the only way to keep buffers out of the
    # init sync until `init_sync_buffers` exists): its FutureWarning, printed once per rank, is silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        return nn.parallel.DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)


def unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity when not distributed)."""
    if not dist.is_initialized():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is set on any rank (every rank gets the same answer)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate equally-shaped tensors of all ranks along dim 0, in rank order."""
    if not dist.is_initialized():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def param_checksum(net: nn.Module) -> torch.Tensor:
    """[2] float64: sum of parameters and sum of their squares (cheap fingerprint of the weights)."""
    s = torch.zeros(2, dtype=torch.float64, device=next(net.parameters()).device)
    for p in net.parameters():
        q = p.detach().double()
        s[0] += q.sum()
        s[1] += (q * q).sum()
    return s


class ReplicaDriftError(RuntimeError):
    """Replicas of a distributed run hold different weights (gradients were not all-reduced)."""


def check_replicas(net: nn.Module, rtol: float = 1e-6) -> None:
    """Raise `ReplicaDriftError` on every rank if any two replicas' weights differ.

    All ranks apply the same all-reduced gradient, so their weights are bit-identical in a correct run;
    the tolerance only absorbs reduction-order noise in the float64 checksum itself.
    """
    if not dist.is_initialized():
        return
    local = param_checksum(unwrap(net))
    every = all_gather_cat(local[None])
    ref = every[0]
    scale = ref.abs() + 1.0
    if ((every - ref).abs() > rtol * scale).any():
        raise ReplicaDriftError(
            f"replicas differ: parameter checksums {every[:, 0].tolist()} -- gradients are not being "
            "all-reduced (is the method given net.module instead of the DDP wrapper?)"
        )
