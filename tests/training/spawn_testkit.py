"""Two-process gloo runs for the distributed tests: spawn workers, join them into one group."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker, out: Path, world: int = 2) -> Path:
    """Run ``worker(rank, world, port, str(out))`` in ``world`` spawned processes; returns ``out``."""
    mp.spawn(worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
    return out


def join_group(rank: int, world: int, port: int) -> None:
    """In a spawned worker: torchrun's environment, one torch thread, the gloo process group."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
