"""Wrapping the network in DistributedDataParallel prints nothing: torch 2.13's deprecation of
`broadcast_buffers` (a FutureWarning once per rank) is silenced where the wrapper is made (issue 24)."""

import warnings

import torch
import torch.distributed as dist
from torch import nn

from meanflow.training import distributed


def test_ddp_wrapper_raises_no_warning(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        info = distributed.init("cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any warning fails the test
            wrapped = distributed.wrap(nn.Linear(3, 2), info, torch.device("cpu"))
        assert isinstance(wrapped, nn.parallel.DistributedDataParallel)
        assert not wrapped.forward_sync_buffers  # still broadcast_buffers=False
    finally:
        dist.destroy_process_group()
