"""Two-process gloo runs for the distributed tests: spawn workers, join them into one group.

The processes meet through a file in the test's own folder (a `FileStore`), not a TCP port: a port
picked as free can be taken by another process before the group binds it, which fails a run at
random on a busy machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def spawn(worker, out: Path, world: int = 2) -> Path:
    """Run ``worker(rank, world, rendezvous, str(out))`` in ``world`` spawned processes; returns ``out``."""
    rendezvous = out / ".rendezvous"
    rendezvous.unlink(missing_ok=True)
    mp.spawn(worker, args=(world, str(rendezvous), str(out)), nprocs=world, join=True)
    return out


def join_group(rank: int, world: int, rendezvous: str) -> None:
    """In a spawned worker: torchrun's rank variables, one torch thread, the gloo process group."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
