"""`meanflow reflow-pairs`: coupled (noise, sample) pairs of a trained flow, for reflow and distill.

    meanflow reflow-pairs runs/00000-toy-2d-flow_matching -n 100000        # -> the run's pairs-n100000-seed0/
    meanflow train --method reflow --set data.name=pairs --data-dir runs/00000-.../pairs-n100000-seed0 \
        --init-from runs/00000-...
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from meanflow.cli.common import add_progress_arg, add_threads_arg, check_device, check_tolerance, pin_threads
from meanflow.errors import UserError


def register(subparsers) -> None:
    from meanflow.methods.solvers import ODE_METHODS
    from meanflow.reflow_pairs import DEFAULT_STEPS, VELOCITY_METHODS

    p = subparsers.add_parser(
        "reflow-pairs", help="solve a trained flow's ODE from seeded noise: (noise, sample) pairs for reflow",
        description="Write N coupled pairs (noise e_i, sample x_i) of a trained velocity model "
                    f"({', '.join(VELOCITY_METHODS)}): e_i is noise i of the seed, x_i the solution at t = 0 "
                    "of dz/dt = v(z, t) from e_i at t = 1. Output: DIR/pairs-00000.safetensors ... and "
                    "DIR/manifest.json; train on them with data.name=pairs --data-dir DIR. Running the same "
                    "command again resumes an interrupted folder.")
    p.add_argument("path", metavar="RUN", help="run folder (newest checkpoint) or checkpoint file")
    p.add_argument("-n", "--num", type=int, required=True, help="number of pairs")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (new, empty, or one to resume; default: RUN/pairs-n<N>-seed<S>)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--solver", choices=ODE_METHODS, default="rk45",
                   help="ODE solver (default rk45, adaptive, as the rectified-flow reference)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"steps of --solver heun/euler (default {DEFAULT_STEPS}); rk45 picks its own")
    p.add_argument("--rtol", type=float, default=1e-5, help="rk45 relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=1e-5, help="rk45 absolute tolerance (default 1e-5)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="pairs solved together (rk45 shares one step size per batch; default 256)")
    p.add_argument("--shard-size", type=int, default=10_000, help="pairs per shard file (default 10000)")
    p.add_argument("--ema", default=None,
                   help="EMA decay of the weights, e.g. 0.9999, or 'raw' (default: the run's first EMA)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_threads_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def describe_source(path: str, ema, cfg) -> dict:
    """What the manifest records about the run: its folder / checkpoint, step, the sha256 of its
    config, method and the weights used (`model/` or `ema/<decay>/`)."""
    from meanflow.training.checkpoint import Checkpoint
    from meanflow.training.config_io import config_to_dict
    from meanflow.training.load import weights_prefix

    ckpt = Checkpoint(path)
    config = json.dumps(config_to_dict(cfg), sort_keys=True)
    return {"run": str(path), "checkpoint": str(ckpt.path), "step": ckpt.step,
            "config_sha256": hashlib.sha256(config.encode()).hexdigest(), "method": cfg.method.name,
            "ema": ema, "weights": weights_prefix(ckpt, ema)}


def default_out(args) -> Path:
    """RUN/pairs-n<N>-seed<S>: the pairs folder inside the source run's folder."""
    from meanflow.export.layout import is_hub_path
    from meanflow.training.checkpoint import run_dir_of

    if is_hub_path(args.path):
        raise UserError(f"{args.path} has no local folder to write into: give --out")
    p = Path(args.path)
    run_dir = p if p.is_dir() else (run_dir_of(p) or p.parent)
    return run_dir / f"pairs-n{args.num}-seed{args.seed}"


def run(args) -> int:
    from meanflow.limits import check_seed, check_steps
    from meanflow.reflow_pairs import DEFAULT_STEPS, VELOCITY_METHODS, PairsJob, write_pairs
    from meanflow.training.load import load_generator

    if args.solver == "rk45" and args.steps is not None:
        raise UserError("--steps applies to --solver heun or euler; rk45 picks its own steps (set --rtol, "
                        "--atol)")
    check_seed(args.seed)
    steps = DEFAULT_STEPS if args.steps is None else check_steps(args.steps)
    check_tolerance(args.rtol, "--rtol")
    check_tolerance(args.atol, "--atol")
    check_device(args.device)
    job = PairsJob(num_pairs=args.num, shard_size=args.shard_size, seed=args.seed, solver=args.solver,
                   steps=steps, rtol=args.rtol, atol=args.atol, batch_size=args.batch_size)
    out = default_out(args) if args.out is None else Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    pin_threads(args)
    method, net, cfg = load_generator(args.path, ema=args.ema, device=args.device)
    if cfg.method.name not in VELOCITY_METHODS:
        raise UserError(f"{args.path} was trained with method {cfg.method.name!r}, whose network is not an "
                        f"instantaneous velocity at h = 0; pairs need a run of {', '.join(VELOCITY_METHODS)}")
    source = describe_source(args.path, args.ema, cfg)
    print(f"pairs of {args.path} (step {source['step']}, {source['weights'].rstrip('/')} weights, method "
          f"{cfg.method.name}) -> {out}: {args.num} pairs, seed {args.seed}, {job.describe()}", flush=True)
    write_pairs(net, out, job, source=source, device=args.device, echo=lambda s: print(s, flush=True),
                progress=not args.no_progress)
    return 0
