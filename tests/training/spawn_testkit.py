"""Two-process gloo runs for the distributed tests: spawn workers, join them into one group.

The processes meet through a file in the test's own folder (a `FileStore`), not a TCP port: a port
picked as free can be taken by another process before the group binds it, which fails a run at
random on a busy machine.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def spawn(worker, out: Path, world: int = 2, attempts: int = 2) -> Path:
    """Run ``worker(rank, world, rendezvous, str(out))`` in ``world`` spawned processes; returns ``out``.

    A worker killed by a signal (not a Python error: those raise at once) is retried once: two
    full-suite runs (of about ten) lost a worker, one to SIGABRT ("terminate called without an
    active exception", a native thread at exit), while the same tests passed alone; a crash that
    repeats still fails.
    """
    rendezvous = out / ".rendezvous"
    for attempt in range(attempts):
        rendezvous.unlink(missing_ok=True)
        try:
            mp.spawn(worker, args=(world, str(rendezvous), str(out)), nprocs=world, join=True)
            return out
        except mp.ProcessExitedException as e:
            if attempt + 1 == attempts or not e.signal_name:
                raise
            warnings.warn(f"distributed test workers died ({e}); running them again", stacklevel=2)
    return out


def leave_group() -> None:
    """In a spawned worker: wait for every rank, then tear the group down (no rank exits while
    another still talks to it)."""
    dist.barrier()
    dist.destroy_process_group()


def join_group(rank: int, world: int, rendezvous: str) -> None:
    """In a spawned worker: torchrun's rank variables, one torch thread, the gloo process group."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
