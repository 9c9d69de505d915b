"""Worker run in 2 spawned gloo processes by test_fsdp.py: FSDP2 vs DDP on a small class-conditional
DiT (gradients of one MeanFlow step with guidance; whole training runs; a cross-format resume)."""

from pathlib import Path

import torch
from safetensors.torch import save_file
from spawn_testkit import join_group, leave_group

N = 8


def make_dit_problem(seed: int = 0):
    """A 2-block DiT on 4x8x8 inputs with 3 classes, MeanFlow with trained-in guidance, one fixed batch."""
    from meanflow.methods import MeanFlow
    from meanflow.networks import build_network

    torch.manual_seed(seed)
    net = build_network("dit", input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=2,
                        num_heads=2, num_classes=3)
    for p in net.parameters():  # leave DiT's zero init: every parameter then gets a gradient
        p.data.add_(0.02 * torch.randn_like(p))
    g = torch.Generator().manual_seed(seed + 1)
    x, noise = torch.randn(N, 4, 8, 8, generator=g), torch.randn(N, 4, 8, 8, generator=g)
    y = torch.randint(0, 3, (N,), generator=g)
    t = torch.rand(N, generator=g) * 0.8 + 0.2
    r = t * torch.rand(N, generator=g)
    r[::2] = t[::2]
    method = MeanFlow(ratio=0.5, norm_p=1.0, norm_eps=0.01, omega=1.0, kappa=0.5, num_classes=3)
    return net, method, x, y, noise, t, r


def dit_overrides(out: Path, name: str, parallel: str, steps: int = 3) -> list[str]:
    return [f"logging.out_dir={out / name}", "logging.progress=false", "logging.tensorboard=false",
            "logging.log_every=1", "logging.sample_count=4", "data.use_labels=true", "network.name=dit",
            "network.kwargs={patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2}",
            "method.kwargs={omega: 1.0, kappa: 0.5, class_dropout: 0.1}", "training.batch_size=8",
            f"training.steps={steps}", "training.checkpoint_every=100", f"training.parallel={parallel}",
            "training.grad_clip=1.0", "training.warmup_steps=0", "training.optimizer=adamw"]


def worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    join_group(rank, world, rendezvous)
    from meanflow.training import distributed, fsdp
    from meanflow.training.distributed import DistInfo
    from meanflow.training.loop import train
    from meanflow.training.presets import resolve_config

    out = Path(out)
    sl = slice(rank * N // world, (rank + 1) * N // world)
    # (1) one MeanFlow step with guidance: DDP wrapper vs FSDP2 module, full gradients
    net, method, x, y, noise, t, r = make_dit_problem()
    ddp = distributed.wrap(net, DistInfo(rank, world, rank), torch.device("cpu"))
    method.loss(ddp, x[sl], y[sl], noise=noise[sl], t=t[sl], r=r[sl]).loss.backward()
    grads = {f"ddp/{n}": p.grad.detach().clone() for n, p in net.named_parameters()}
    net2, *_ = make_dit_problem()
    fsdp.shard_model(net2, torch.device("cpu"))
    method.loss(net2, x[sl], y[sl], noise=noise[sl], t=t[sl], r=r[sl]).loss.backward()
    local = {n: tuple(fsdp.local(p.grad).shape) for n, p in net2.named_parameters()}
    grads.update({f"fsdp/{n}": fsdp.full(p.grad).detach().clone() for n, p in net2.named_parameters()})
    save_file(grads, str(out / f"grads{rank}.safetensors"))
    (out / f"shapes{rank}.txt").write_text(repr(local))

    # (2) the loop: 3 steps under DDP and under FSDP from the same seed; then resume the DDP
    # checkpoint under FSDP (the test resumes the FSDP one in a single process)
    for parallel in ("ddp", "fsdp"):
        train(resolve_config("digits", overrides=dit_overrides(out, parallel, parallel)), echo=lambda s: None)
    (ddp_run,) = (out / "ddp").iterdir()
    cfg = resolve_config("digits", overrides=dit_overrides(out, "ddp", "fsdp", steps=4))
    train(cfg, resume=ddp_run, echo=lambda s: None)
    leave_group()
