"""`meanflow train`: resolve a config (preset <- YAML <- overrides), print it, train."""

from __future__ import annotations

import os
import sys

from meanflow.errors import UserError
from meanflow.training.checkpoint import Checkpoint
from meanflow.training.config_io import apply_overrides, config_from_dict, config_to_yaml
from meanflow.training.presets import resolve_config

# Explicit flags and the config keys they set (applied after --set, so they win; with the --set
# overrides they form one layer, so `--method NAME` drops the kwargs of the method below).
FLAGS = {
    "method": "method.name",
    "steps": "training.steps",
    "batch_size": "training.batch_size",
    "lr": "training.lr",
    "seed": "training.seed",
    "device": "training.device",
    "out_dir": "logging.out_dir",
    "data_dir": "data.data_dir",
    "init_from": "training.init_from",
    "threads": "training.num_threads",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model (default: one-step MeanFlow on 8x8 digits, 3.5-6 min on 2 CPU cores)",
        description="Train a model. Layers: defaults <- --preset <- --config YAML <- --set KEY=VALUE <- "
                    "explicit flags. Same command alone or under torchrun.")
    p.add_argument("--preset", default=None, help="named preset (see `meanflow presets`; default: digits)")
    p.add_argument("--config", default=None, metavar="YAML", help="YAML file of config overrides")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set training.lr=1e-4 (repeatable)")
    p.add_argument("--method", default=None, metavar="NAME",
                   help="method.name (see `meanflow methods`); another method starts from its own defaults")
    p.add_argument("--steps", type=int, default=None, help="training.steps")
    p.add_argument("--batch-size", type=int, default=None, help="training.batch_size (global)")
    p.add_argument("--lr", type=float, default=None, help="training.lr")
    p.add_argument("--seed", type=int, default=None, help="training.seed")
    p.add_argument("--device", default=None, help="training.device: auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="training.num_threads: CPU threads of torch (default 1; 0: torch's default)")
    p.add_argument("--out-dir", default=None, help="logging.out_dir (parent of the run folders)")
    p.add_argument("--data-dir", default=None, help="data.data_dir")
    p.add_argument("--init-from", default=None, metavar="RUN_OR_CKPT",
                   help="training.init_from: start a new run from another run's weights (its first EMA; "
                        "training.init_ema picks others)")
    p.add_argument("--download", action="store_true",
                   help="data.download: fetch a missing dataset into the cache (md5-verified)")
    p.add_argument("--resume", default=None, metavar="RUN_OR_CKPT",
                   help="continue a run from its newest checkpoint (or this checkpoint file)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, check that its data and network can be built, and exit")
    p.set_defaults(func=run)


def flag_overrides(args) -> list[str]:
    out = []
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    if args.steps is not None:
        out.append("training.epochs=null")
    if args.download:
        out.append("data.download=true")
    return out


def resolve(args):
    """The config of this invocation. With --resume and no config options, the checkpoint's own
    config (plus explicit flags) is used; otherwise the layers are resolved as usual and the loop
    checks that they match the checkpoint."""
    flags = flag_overrides(args)
    if args.resume and args.preset is None and args.config is None and not args.overrides:
        return config_from_dict(apply_overrides(Checkpoint(args.resume).config, flags))
    return resolve_config(args.preset, args.config, [*args.overrides, *flags])


def check_resume(path: str) -> None:
    """Refuse to resume from a checkpoint whose weights hold NaN or infinite values: it is no good state
    (training from it stops at the first step, blaming it as the last good checkpoint)."""
    from meanflow.training.checkpoint import list_checkpoints, run_dir_of

    ckpt = Checkpoint(path)
    bad = ckpt.nonfinite()
    if not bad:
        return
    older = [p for p in list_checkpoints(run_dir_of(ckpt.path) or ckpt.path.parent) if p != ckpt.path]
    hint = f"resume from an earlier checkpoint file, e.g. {older[-1]}" if older else "start a new run"
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    raise UserError(f"--resume {path}: checkpoint {ckpt.path} holds non-finite weights ({bad[0]}{more}): it "
                    f"is not a good state to continue from; {hint}")


def preflight(cfg, args) -> None:
    """Checks that need files beyond the config, before anything is built: the teacher is a velocity
    model, a resumed checkpoint holds finite weights."""
    from meanflow.training.teacher import check_teacher_method, teacher_method

    if cfg.training.teacher:
        name = teacher_method(cfg.training.teacher)
        if name is not None:
            check_teacher_method(name, cfg.training.teacher)
    if args.resume:
        check_resume(args.resume)


def dry_run(cfg) -> None:
    """Build the data set, the method and the network (on the meta device: no memory for the weights) of
    `cfg`, so that a dry run fails as the real run would; print what was built. Nothing is downloaded:
    with `data.download` a data set that is not here yet is taken at its known shape."""
    import dataclasses

    import torch

    from meanflow.training.build import build_data, build_method_from, build_net, check_pairs, data_shape
    from meanflow.training.build import num_classes as count_classes
    from meanflow.training.config import IMAGE_SHAPES

    try:
        data = build_data(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, download=False)))
    except UserError:
        if not (cfg.data.download and cfg.data.name in IMAGE_SHAPES):
            raise
        data = None  # the run downloads it
    if data is None:
        pad = cfg.data.options.get("pad_to")
        c, h, w = IMAGE_SHAPES[cfg.data.name]
        shape, classes = (c, h, w) if pad is None else (c, int(pad), int(pad)), cfg.expected_classes()
        what = f"{cfg.data.name} is not here yet (the run downloads it): shape {list(shape)}"
    else:
        shape, classes = data_shape(data), count_classes(cfg, data)
        what = f"{len(data)} training samples of shape {list(shape)}"
    method = build_method_from(cfg, classes)
    if data is not None:
        check_pairs(cfg, data, method)
    with torch.device("meta"):
        net = build_net(cfg, shape, classes, method)
    params = sum(p.numel() for p in net.parameters())
    print(f"# dry run: {what}, {classes} classes; network {cfg.network.name} with {params / 1e6:.2f}M "
          "parameters; nothing written")


def run(args) -> int:
    cfg = resolve(args)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        print("# resolved config", file=sys.stdout)
        print(config_to_yaml(cfg), end="", flush=True)
    preflight(cfg, args)
    if args.dry_run:
        dry_run(cfg)
        return 0
    from meanflow.training.loop import train

    try:
        train(cfg, resume=args.resume, raise_on_interrupt=True)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    return 0
