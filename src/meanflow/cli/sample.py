"""`meanflow sample`: seeded samples of a trained run -> PNG grid + .npz of uint8 images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meanflow.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="draw samples from a run folder or checkpoint",
                              description="Draw N seeded samples (1 step by default) and write a PNG grid "
                                          "and an .npz of uint8 images [N, H, W, C].")
    p.add_argument("path", metavar="RUN_OR_CKPT", help="run folder (newest checkpoint) or checkpoint file")
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: the method's own, 1 for the one-step methods; "
                        "see `meanflow methods`)")
    p.add_argument("--class", dest="class_label", type=int, default=None,
                   help="generate this class only (class-conditional models)")
    p.add_argument("--ema", default=None,
                   help="EMA decay to sample with, e.g. 0.9999, or 'raw' (default: the run's first EMA)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="generation batch size")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None,
                   help="output path without extension (default: <run>/samples/sample-...); "
                        "writes OUT.png and OUT.npz")
    p.set_defaults(func=run)


def _out_base(args) -> Path:
    """The output path without extension: --out, or <run>/samples/sample-n..-steps..-seed.. ."""
    if args.out is not None:
        out = Path(args.out)
        return out.with_suffix("") if out.suffix in (".png", ".npz") else out
    from meanflow.training.checkpoint import run_dir_of

    p = Path(args.path)
    run_dir = p if p.is_dir() else (run_dir_of(p) or p.parent)
    tag = f"sample-n{args.num}-steps{args.steps}-seed{args.seed}"
    if args.class_label is not None:
        tag += f"-class{args.class_label}"
    if args.ema is not None:
        tag += f"-ema{args.ema}"
    return run_dir / "samples" / tag


def run(args) -> int:
    """Generate, then write OUT.npz and OUT.png.

    Output guarantee: both files are first written in full to hidden temp files in OUT's folder and
    only then moved onto their final names (os.replace), so a failure while generating or writing
    (disk full, read-only folder, crash, Ctrl-C) leaves no partial file and no temp file behind: each
    of OUT.npz and OUT.png is either untouched (its previous complete content, or absent) or the
    complete new file.
    """
    import torch

    from meanflow.sampling import generate, model_info
    from meanflow.training.load import load_generator
    from meanflow.utils.files import atomic_files, prepare_output
    from meanflow.utils.images import make_grid, png_image, points_image, to_uint8

    if args.num < 1:
        raise UserError(f"-n must be >= 1, got {args.num}")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available")
    method, net, cfg = load_generator(args.path, ema=args.ema, device=args.device)
    if args.steps is None:
        args.steps = method.default_steps
    out = _out_base(args)
    label = f"--out {args.out}" if args.out is not None else f"output {out}"
    for suffix in (".npz", ".png"):  # fail before the expensive part
        prepare_output(out.with_suffix(suffix), label, create=False)
    shape, classes = model_info(net)
    x = generate(method, net, 0, args.num, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                 class_label=args.class_label, device=args.device)
    labels = {}
    if classes:
        from meanflow.sampling import labels_for

        labels = {"labels": labels_for(0, args.num, classes, args.class_label).numpy()}
    png = None
    if len(shape) == 3 and not getattr(net, "meanflow_is_latent", False):
        images = to_uint8(x)
        arrays = {"images": images, **labels}
        ncol = classes if classes and args.class_label is None and args.num % classes == 0 else None
        png = png_image(make_grid(images, ncol=ncol), scale=max(1, round(48 / shape[1])))
        kind = f"uint8 images {list(images.shape)}"
    else:
        arrays = {"samples": x.numpy(), **labels}
        if len(shape) == 1 and shape[0] == 2:
            png = png_image(points_image(x))
        kind = f"float32 samples {list(x.shape)}"
    prepare_output(out.with_suffix(".npz"), label)
    with atomic_files("samples") as files:
        np.savez(files.tmp(out.with_suffix(".npz")), **arrays)
        if png is not None:
            png.save(files.tmp(out.with_suffix(".png")), format="PNG")
    written = f"{out}.png, {out}.npz" if png is not None else f"{out}.npz"
    print(f"{args.num} samples ({args.steps} step(s), seed {args.seed}) -> {written} ({kind})")
    return 0
