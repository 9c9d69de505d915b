"""`meanflow likelihood`: exact bits/dim of held-out data under a Score SDE model (probability-flow ODE).

The log-likelihood of a point x is the change of variables along the probability-flow ODE from
t = eps to t = 1 (Song et al. 2021, App. D): ``log p_0(x) = log p_1(z_1) + int_eps^1 div f~(z_t, t) dt``
with the divergence estimated by Hutchinson's trick (one fixed probe per point and solve). Images
(uint8 scaled to [-1, 1]) are dequantised with uniform noise, ``x' = (u8 + U[0, 1)) / 128 - 1``, and
reported in bits per 8-bit dimension (offset 7, as the reference code); points are reported as the
continuous density's bits per dimension.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from meanflow.cli.common import add_progress_arg, add_threads_arg, check_device, check_tolerance, pin_threads
from meanflow.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "likelihood", help="bits/dim of held-out data under a Score SDE run (probability-flow ODE)",
        description="Exact likelihood (bits/dim) of N held-out points of the run's dataset through the "
                    "probability-flow ODE with a Hutchinson trace estimator (RK45).")
    p.add_argument("path", metavar="RUN_OR_CKPT", help="run folder (newest checkpoint) or checkpoint file")
    p.add_argument("-n", "--num", type=int, default=1000, help="held-out points to evaluate (default 1000)")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="which split of the run's dataset (default test; 2-D toys draw fresh points)")
    p.add_argument("--ema", default=None, help="EMA decay, or 'raw' (default: the run's first EMA)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probes, dequantisation and toy draws")
    p.add_argument("--batch-size", type=int, default=250, help="points per ODE solve")
    p.add_argument("--rtol", type=float, default=1e-5, help="RK45 relative tolerance (reference: 1e-5)")
    p.add_argument("--atol", type=float, default=1e-5, help="RK45 absolute tolerance (reference: 1e-5)")
    p.add_argument("--hutchinson", default="rademacher", choices=("rademacher", "gaussian"),
                   help="probe distribution of the trace estimator")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_threads_arg(p)
    add_progress_arg(p)
    p.add_argument("--out", default=None,
                   help="JSON file of the result (default: RUN/likelihood-<split>-n<N>-seed<S>.json)")
    p.set_defaults(func=run)


def held_out(cfg, split: str, n: int, seed: int):
    """The first `n` points of `split` of the run's dataset (a fresh draw for 2-D toys): (x, y)."""
    from meanflow.data import build_dataset

    d = cfg.data
    if d.is_toy:
        data = build_dataset(d.name, split="test", n=n, seed=seed)
    else:
        data = build_dataset(d.name, split=split, data_dir=d.data_dir, **dict(d.options))
    if len(data) < n:
        raise UserError(f"the {split} split of {d.name!r} has {len(data)} points, fewer than -n {n}")
    y = None if (data.y is None or not cfg.data.use_labels) else data.y[:n]
    return data.x[:n], y


def default_out(args) -> Path | None:
    """RUN/likelihood-<split>-n<N>-seed<S>.json in the run folder of `args.path` (None for hf://)."""
    from meanflow.export.layout import is_hub_path
    from meanflow.training.checkpoint import run_dir_of

    if is_hub_path(args.path):
        return None
    p = Path(args.path)
    run_dir = p if p.is_dir() else (run_dir_of(p) or p.parent)
    return run_dir / f"likelihood-{args.split}-n{args.num}-seed{args.seed}.json"


def run(args) -> int:
    import torch

    from meanflow.limits import check_fits, check_seed
    from meanflow.training.load import load_generator
    from meanflow.utils.progress import progress_bar

    if args.num < 1 or args.batch_size < 1:
        raise UserError(f"-n and --batch-size must be >= 1, got {args.num} and {args.batch_size}")
    check_tolerance(args.rtol, "--rtol")
    check_tolerance(args.atol, "--atol")
    check_seed(args.seed)
    check_device(args.device)
    pin_threads(args)
    from meanflow.utils.files import atomic_files, prepare_output

    out = default_out(args) if args.out is None else Path(args.out)
    if out is not None:
        prepare_output(out, f"--out {out}", create=False)  # fail before the expensive part
    method, net, cfg = load_generator(args.path, ema=args.ema, device=args.device)
    if not hasattr(method, "bits_per_dim"):
        raise UserError(f"run {args.path} was trained with method {cfg.method.name!r}; exact likelihood "
                        "needs a Score SDE run (method score_sde)")
    shape = list(net.meanflow_shape)
    check_fits(3 * 4 * args.num * math.prod(shape), f"-n {args.num} points of shape {shape}",
               "ask for fewer (-n)")
    x, y = held_out(cfg, args.split, args.num, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    is_image = x.ndim == 4 and not getattr(net, "meanflow_is_latent", False)
    offset = 0.0
    if is_image:  # uniform dequantisation of the 8-bit values, reported in bits per 8-bit dimension
        u8 = torch.round((x + 1) * 127.5)
        x = (u8 + torch.rand(x.shape, generator=g)) / 128.0 - 1.0
        offset = 7.0
    t0, bpd = time.perf_counter(), []
    bar = progress_bar(args.num, "likelihood", "point", not args.no_progress)
    for i in range(0, args.num, args.batch_size):
        xb = x[i:i + args.batch_size].to(args.device)
        yb = None if y is None else y[i:i + args.batch_size].to(args.device)
        bpd.append(method.bits_per_dim(net, xb, yb, generator=g, rtol=args.rtol, atol=args.atol,
                                       hutchinson=args.hutchinson, dequant_offset=offset).cpu())
        if bar is not None:
            bar.update(len(xb))
    if bar is not None:
        bar.close()
    bpd = torch.cat(bpd).double()
    mean, sem = float(bpd.mean()), float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    res = {"bits_per_dim": mean, "sem": sem, "n": args.num, "split": args.split, "dataset": cfg.data.name,
           "dequantized": is_image, "rtol": args.rtol, "atol": args.atol, "hutchinson": args.hutchinson,
           "seconds": time.perf_counter() - t0, "path": str(args.path)}
    if out is not None:
        prepare_output(out, f"--out {out}")
        with atomic_files("likelihood") as files:
            files.tmp(out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"{mean:.4f} +- {sem:.4f} bits/dim over {args.num} {cfg.data.name} {args.split} points "
          f"({'dequantised 8-bit, ' if is_image else ''}RK45 rtol {args.rtol:g}, {res['seconds']:.1f} s)"
          + ("" if out is None else f" -> {out}"))
    return 0
