"""`meanflow sample`: seeded samples of a trained run -> PNG grid + .npz of uint8 images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meanflow.cli.common import add_progress_arg, add_threads_arg, check_device, pin_threads
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
    cls = p.add_mutually_exclusive_group()
    cls.add_argument("--class", dest="class_label", type=int, default=None,
                     help="generate this class only (class-conditional models)")
    cls.add_argument("--classes", default=None, metavar="IDS|random",
                     help="class ids, comma-separated, cycled over the samples (e.g. 207,360,387), or "
                          "'random' (seeded by --seed); default: balanced, sample i gets class i %% K")
    p.add_argument("--ema", default=None,
                   help="EMA decay to sample with, e.g. 0.9999, or 'raw' (default: the run's first EMA)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="generation batch size")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_threads_arg(p)
    add_progress_arg(p)
    add_guidance_args(p)
    add_vae_args(p)
    p.add_argument("--no-decode", action="store_true",
                   help="latent models: write the raw latents (float32 'samples') instead of decoded images")
    p.add_argument("--out", default=None,
                   help="output path without extension (default: <run>/samples/sample-...); "
                        "writes OUT.png and OUT.npz")
    p.set_defaults(func=run)


def add_vae_args(p) -> None:
    """--vae and --vae-batch-size: how the samples of a latent model become images (`sample` and `eval`)."""
    p.add_argument("--vae", default=None, metavar="FOLDER_OR_HUB_ID",
                   help="latent models: the VAE that decodes the samples (default: the one the run's latent "
                        "cache was encoded with; its fingerprint must match)")
    p.add_argument("--vae-batch-size", type=int, default=32, help="latents per VAE decode call")


def class_choice(args):
    """`generate`'s class_label of --class / --classes: an int, a list of ids, 'random' or None."""
    raw = getattr(args, "classes", None)
    if raw is None:
        return args.class_label
    if raw.strip() == "random":
        return "random"
    try:
        ids = [int(c) for c in raw.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--classes must be comma-separated class ids or 'random', got {raw!r}") from None
    if not ids:
        raise UserError("--classes is empty")
    return ids


def latent_decode(args, net):
    """The decoder of a latent model's samples (None for a pixel model or with --no-decode); --vae or
    --no-decode on a pixel model is a UserError (they would be silently ignored)."""
    if not getattr(net, "meanflow_is_latent", False):
        given = (("--vae", args.vae is not None), ("--no-decode", getattr(args, "no_decode", False)))
        flags = [f for f, on in given if on]
        if flags:
            verb = "apply" if len(flags) > 1 else "applies"
            raise UserError(f"{' and '.join(flags)} {verb} to latent models (trained on a latent cache); "
                            "this model generates pixels")
        return None
    if getattr(args, "no_decode", False):
        return None
    if args.vae_batch_size < 1:
        raise UserError(f"--vae-batch-size must be >= 1, got {args.vae_batch_size}")
    from meanflow.latent.vae import latent_decoder

    decode, _ = latent_decoder(getattr(net, "meanflow_vae", None), args.vae, args.device, args.vae_batch_size)
    return decode


GUIDANCE_INPUT = "guidance"
"""The network input (`Method.net_inputs`) that --omega / --interval set at sampling time."""


def add_guidance_args(p) -> None:
    """--omega W and --interval A B: guidance chosen at sampling time (`meanflow sample` and `eval`)."""
    p.add_argument("--omega", type=float, default=None, metavar="W",
                   help="guidance scale W >= 1 of a model that takes guidance as an input (class-conditional "
                        "imf; still 1 NFE per step); default: the method's sample_omega (1: no guidance)")
    p.add_argument("--interval", type=float, nargs=2, default=None, metavar=("A", "B"),
                   help="guidance interval: guide only at times t in [A, B], 0 <= A <= B <= 1 (with --omega; "
                        "default: the method's, [0, 1])")


def guidance_options(args, method, cfg) -> dict:
    """The `method.sample` keywords of --omega / --interval (`omega`, `interval`; empty when neither is
    given); a UserError when the method gives its network no guidance input."""
    options = {}
    if getattr(args, "omega", None) is not None:
        options["omega"] = float(args.omega)
    if getattr(args, "interval", None) is not None:
        options["interval"] = tuple(float(a) for a in args.interval)
    if options and GUIDANCE_INPUT not in getattr(method, "net_inputs", ()):
        flags = "/".join(f"--{k}" for k in options)
        raise UserError(f"{flags} choose the guidance of models that take it as an input (class-conditional "
                        f"imf); this run's method {cfg.method.name!r} has no such input")
    return options


def guidance_tag(args) -> str:
    """File-name tag of --omega / --interval, e.g. '-omega4-interval0.3-0.8' ('' when not given)."""
    tag = ""
    if getattr(args, "omega", None) is not None:
        tag += f"-omega{args.omega:g}"
    if getattr(args, "interval", None) is not None:
        tag += f"-interval{args.interval[0]:g}-{args.interval[1]:g}"
    return tag


def _out_base(args) -> Path:
    """The output path without extension: --out, or <run>/samples/sample-n..-steps..-seed.. ."""
    if args.out is not None:
        out = Path(args.out)
        return out.with_suffix("") if out.suffix in (".png", ".npz") else out
    from meanflow.export.layout import is_hub_path
    from meanflow.training.checkpoint import run_dir_of

    if is_hub_path(args.path):
        raise UserError(f"{args.path} has no local folder to write into: give --out")
    p = Path(args.path)
    run_dir = p if p.is_dir() else (run_dir_of(p) or p.parent)
    tag = f"sample-n{args.num}-steps{args.steps}-seed{args.seed}"
    if args.class_label is not None:
        tag += f"-class{args.class_label}"
    if getattr(args, "classes", None) is not None:
        tag += "-classes" + ("random" if args.classes.strip() == "random" else args.classes.replace(",", "_"))
    if args.ema is not None:
        tag += f"-ema{args.ema}"
    tag += guidance_tag(args)
    return run_dir / "samples" / tag


def check_memory(n: int, net) -> None:
    """Refuse `n` samples that cannot be held in memory at once (float32 and their copies)."""
    import math

    from meanflow.limits import check_fits

    shape = getattr(net, "meanflow_shape", None)
    if shape is None:  # not a network of load_generator: nothing to bound by
        return
    check_fits(2 * 4 * n * math.prod(shape), f"-n {n} samples of shape {list(shape)}", "ask for fewer (-n)")


def _file(base: Path, suffix: str) -> Path:
    """``base`` plus ``suffix``: ``sample-...-omega2.5`` -> ``sample-...-omega2.5.npz`` (not the
    ``with_suffix`` reading of ``.5`` as a suffix to replace)."""
    return base.with_name(base.name + suffix)


def run(args) -> int:
    """Generate, then write OUT.npz and OUT.png.

    Output guarantee: both files are first written in full to hidden temp files in OUT's folder and
    only then moved onto their final names (os.replace), so a failure while generating or writing
    (disk full, read-only folder, crash, Ctrl-C) leaves no partial file and no temp file behind: each
    of OUT.npz and OUT.png is either untouched (its previous complete content, or absent) or the
    complete new file.
    """
    from meanflow.limits import check_seed, check_steps
    from meanflow.sampling import generate, model_info, refuse_exploded
    from meanflow.training.load import load_generator
    from meanflow.utils.files import atomic_files, prepare_output
    from meanflow.utils.images import make_grid, png_image, points_image, to_uint8

    if args.num < 1:
        raise UserError(f"-n must be >= 1, got {args.num}")
    if args.steps is not None:
        check_steps(args.steps)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_seed(args.seed)
    check_device(args.device)
    pin_threads(args)
    method, net, cfg = load_generator(args.path, ema=args.ema, device=args.device)
    check_memory(args.num, net)
    options = guidance_options(args, method, cfg)
    chosen = class_choice(args)
    decode = latent_decode(args, net)  # a missing or mismatched VAE fails before generating
    if args.steps is None:
        args.steps = method.default_steps
    out = _out_base(args)
    label = f"--out {args.out}" if args.out is not None else f"output {out}"
    for suffix in (".npz", ".png"):  # fail before the expensive part
        prepare_output(_file(out, suffix), label, create=False)
    shape, classes = model_info(net)
    x = generate(method, net, 0, args.num, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                 class_label=chosen, device=args.device, sample_options=options,
                 progress=not args.no_progress)
    labels = {}
    if classes:
        from meanflow.sampling import labels_for

        labels = {"labels": labels_for(0, args.num, classes, chosen, args.seed).numpy()}
    png = None
    if decode is not None:  # latents -> the VAE -> images (the latents are kept beside them)
        labels["latents"] = x.numpy()
        x = decode(x)
    is_images = len(shape) == 3 and (decode is not None or not getattr(net, "meanflow_is_latent", False))
    refuse_exploded(x, images=is_images)
    if len(shape) == 3 and (decode is not None or not getattr(net, "meanflow_is_latent", False)):
        images = to_uint8(x)
        arrays = {"images": images, **labels}
        ncol = classes if classes and chosen is None and args.num % classes == 0 else None
        png = png_image(make_grid(images, ncol=ncol), scale=max(1, round(48 / images.shape[1])))
        kind = f"uint8 images {list(images.shape)}"
    else:
        arrays = {"samples": x.numpy(), **labels}
        if len(shape) == 1 and shape[0] == 2:
            png = png_image(points_image(x))
        kind = f"float32 samples {list(x.shape)}"
    prepare_output(_file(out, ".npz"), label)
    with atomic_files("samples") as files:
        np.savez(files.tmp(_file(out, ".npz")), **arrays)
        if png is not None:
            png.save(files.tmp(_file(out, ".png")), format="PNG")
    written = f"{out}.png, {out}.npz" if png is not None else f"{out}.npz"
    guided = "".join(f", {k} {v}" for k, v in options.items())
    print(f"{args.num} samples ({args.steps} step(s), seed {args.seed}{guided}) -> {written} ({kind})")
    return 0
