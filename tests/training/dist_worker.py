"""Worker run in 2 spawned gloo processes by test_distributed.py (a module, so spawn can import it)."""

from pathlib import Path

import torch
from safetensors.torch import save_file
from spawn_testkit import join_group, leave_group


def make_problem(seed: int = 0, n: int = 8):
    """A tiny network, a MeanFlow method and one fixed batch with fixed noise / t / r."""
    from meanflow.methods import MeanFlow
    from meanflow.networks import build_network

    torch.manual_seed(seed)
    net = build_network("mlp", dim=6, hidden=16, depth=2)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 6, generator=g)
    noise = torch.randn(n, 6, generator=g)
    t = torch.rand(n, generator=g) * 0.8 + 0.2
    r = t * torch.rand(n, generator=g)
    r[: n // 2] = t[: n // 2]  # half the batch with r = t, half with r < t
    r[::2], t[::2] = r.flip(0)[::2], t.flip(0)[::2]  # interleave so both ranks get both kinds
    return net, MeanFlow(ratio=0.5, norm_p=1.0, norm_eps=0.01), x, noise, t, r


def grads_of(net):
    return {n: p.grad.detach().clone() for n, p in net.named_parameters()}


def worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    join_group(rank, world, rendezvous)
    from meanflow.training import distributed
    from meanflow.training.distributed import DistInfo, ReplicaDriftError

    out = Path(out)
    info = DistInfo(rank, world, rank)
    n = 8
    sl = slice(rank * n // world, (rank + 1) * n // world)

    # (1) the MeanFlow loss through the DDP wrapper: gradients are all-reduced
    net, method, x, noise, t, r = make_problem()
    ddp = distributed.wrap(net, info, torch.device("cpu"))
    method.loss(ddp, x[sl], noise=noise[sl], t=t[sl], r=r[sl]).loss.backward()
    save_file(grads_of(net), str(out / f"wrapper{rank}.safetensors"))
    distributed.check_replicas(ddp)  # identical after a synchronised step: no error

    # (2) the trap of SPEC 4.1: through .module nothing is all-reduced
    net2, method, *_ = make_problem()
    ddp2 = distributed.wrap(net2, info, torch.device("cpu"))
    method.loss(ddp2.module, x[sl], noise=noise[sl], t=t[sl], r=r[sl]).loss.backward()
    save_file(grads_of(net2), str(out / f"module{rank}.safetensors"))
    torch.optim.SGD(net2.parameters(), lr=0.1).step()  # replicas now drift apart
    try:
        distributed.check_replicas(ddp2)
        (out / f"drift{rank}.txt").write_text("not detected")
    except ReplicaDriftError as e:
        (out / f"drift{rank}.txt").write_text(f"detected: {e}")

    # (3) the whole loop under 2 processes: one run folder, written by rank 0
    from meanflow.errors import UserError
    from meanflow.training.loop import train
    from meanflow.training.presets import resolve_config

    cfg = resolve_config("toy-2d", overrides=[
        f"logging.out_dir={out / 'runs'}", "logging.progress=false", "logging.tensorboard=false",
        "logging.log_every=2", "logging.sample_count=10", "network.kwargs={hidden: 16, depth: 2}",
        "data.num_points=256", "training.batch_size=16", "training.grad_accum=2", "training.steps=4",
        "training.replica_check_every=2"])
    run = train(cfg, echo=lambda s: None)
    (out / f"run{rank}.txt").write_text(str(run))
    try:
        odd = resolve_config("toy-2d", overrides=[f"logging.out_dir={out / 'bad'}", "training.batch_size=15"])
        train(odd)
        (out / f"odd{rank}.txt").write_text("no error")
    except UserError as e:
        (out / f"odd{rank}.txt").write_text(str(e))
    leave_group()
