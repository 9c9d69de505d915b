"""`meanflow convert`: turn a released checkpoint of another code into a meanflow checkpoint."""

from __future__ import annotations

from meanflow.cli.common import add_threads_arg, pin_threads


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert an official MeanFlow checkpoint into a meanflow checkpoint",
        description="Convert a checkpoint of the official MeanFlow PyTorch code (Gsunshine/py-meanflow, "
                    "checkpoint-*.pth) into a meanflow checkpoint for `meanflow sample`, `meanflow eval` and "
                    "`meanflow train --resume`. The .pth file is read without running code from it. OUT is a "
                    "run folder (OUT/checkpoints/ckpt-<step>.safetensors with its config), or a checkpoint "
                    "file when it ends in .safetensors.")
    p.add_argument("--from", dest="source_format", required=True, choices=("py-meanflow",),
                   help="format of CKPT: py-meanflow (the official PyTorch CIFAR-10 code)")
    p.add_argument("ckpt", metavar="CKPT", help="the official checkpoint (.pth)")
    p.add_argument("out", metavar="OUT", help="run folder, or OUT.safetensors for a single file")
    p.add_argument("--force", action="store_true",
                   help="replace an existing OUT file / write into a non-empty folder")
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from meanflow.convert import convert_py_meanflow, read_torch_checkpoint, write_converted

    pin_threads(args)
    obj = read_torch_checkpoint(args.ckpt)
    conv = convert_py_meanflow(obj, args.ckpt)
    path = write_converted(conv, args.out, force=args.force, source=args.ckpt)
    n = sum(v.numel() for v in conv.model.values())
    decays = ", ".join(repr(d) for d in conv.ema)
    opt = "with" if conv.optimizer is not None else "without"
    print(f"converted {args.ckpt} (step {conv.state['step']}, {n / 1e6:.2f}M parameters, EMA {decays}, "
          f"{opt} optimizer state) -> {path}")
    return 0
