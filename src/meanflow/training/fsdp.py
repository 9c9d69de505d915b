"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the large DiTs, and full-tensor state for checkpoints.

Chosen by `training.parallel=fsdp` under torchrun. `shard_model` makes each block of `net.blocks` (DiT,
iMF DiT) a unit, then the root (embedders, final layer): parameters become `DTensor` shards (dim 0,
1/N per rank) that each unit all-gathers just before its forward and frees after it; backward
reduce-scatters the gradients (the mean over ranks, as DDP's all-reduce). The method gets the sharded
module itself, like DDP's wrapper (SPEC §4.1): the tangent-mode JVP of the networks is an ordinary
call of the units, so the same hooks fire (measured: gradients equal DDP's, tests/training).

Memory per rank for P parameters in fp32 with Adam and one EMA: DDP 16 P bytes (weights, grads, 2
Adam moments) + 4 P (EMA); FSDP (16 P + 4 P) / N + the largest unit's gathered weights and grads.

Checkpoints stay one format: every helper here returns full, unsharded tensors on the CPU (collective:
every rank must call it), so a checkpoint written under FSDP loads in a single process or under DDP,
and the other way round (`shard_like`, `load_optimizer_state`).
"""

from __future__ import annotations

import torch
from torch import nn


def _dtensor_type():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(t) -> bool:
    """Whether `t` is a DTensor (an FSDP shard)."""
    return isinstance(t, _dtensor_type())


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of `t` (the tensor itself unless it is a DTensor)."""
    return t.to_local() if is_sharded(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (all-gathered from the shards of a DTensor: collective)."""
    return t.full_tensor() if is_sharded(t) else t


def shard_model(net: nn.Module, device: torch.device) -> nn.Module:
    """Apply FSDP2 in place: each module of `net.blocks` (if any), then `net`. Returns `net`.

    Needs an initialised process group (torchrun); `device` picks the mesh ('cpu' uses gloo).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in getattr(net, "blocks", ()):
        fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)
    return net


def full_state(tensors: dict[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
    """`tensors` with every DTensor gathered, on the CPU (collective). `keep=False` (the ranks that do
    not write the checkpoint) takes part in the gathers but keeps nothing: host memory for one copy."""
    out = {}
    for k, v in tensors.items():
        v = full(v).detach()
        if keep:
            out[k] = v.cpu()
    return out


def model_state(net: nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """The full `state_dict` of `net` (sharded or not) on the CPU (collective under FSDP)."""
    return full_state(net.state_dict(), keep)


def shard_like(tensors: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors cut into this rank's shards wherever `like[k]` is a DTensor (same mesh, placements)."""
    from torch.distributed.tensor import distribute_tensor

    out = {}
    for k, v in tensors.items():
        ref = like[k]
        if is_sharded(ref):
            v = distribute_tensor(v.to(device=ref.device, dtype=ref.dtype), ref.device_mesh, ref.placements,
                                  src_data_rank=None)  # every rank holds the same full tensor
        out[k] = v
    return out


def optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict:
    """`optimizer.state_dict()` with full tensors (keys: parameter indices in parameter order, the
    layout of an unsharded optimizer) (collective under FSDP; `keep` as in `full_state`)."""
    sd = optimizer.state_dict()
    state = {}
    for i, st in sd["state"].items():
        tensors = full_state({k: v for k, v in st.items() if torch.is_tensor(v)}, keep)
        state[i] = {**{k: v for k, v in st.items() if not torch.is_tensor(v)}, **tensors}
    sd["state"] = state
    return sd


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full `optimizer_state` (from any run) into an optimizer over sharded or plain parameters."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, st in state["state"].items():
        p = params[int(i)]
        for k, v in st.items():
            if torch.is_tensor(v) and is_sharded(p) and v.dim() > 0:
                st[k] = shard_like({k: v}, {k: p})[k]
    optimizer.load_state_dict(state)
