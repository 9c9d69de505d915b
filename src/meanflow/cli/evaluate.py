"""``meanflow ref-stats`` and ``meanflow eval``: FID / KID like the papers measure them.

    meanflow ref-stats --dataset mnist --data-dir DATA --split test --out mnist_test.npz
    meanflow ref-stats --images FOLDER_OR_NPZ --out ref.npz
    meanflow eval --samples samples.npz --ref mnist_test.npz
    meanflow eval --checkpoint RUN_OR_CKPT --num-samples 10000 --steps 1 --ref mnist_test.npz

Samples are uint8 (generated ones quantised as round((x+1)*127.5)), embedded by the FID
Inception-v3 (pool3), and compared with the reference statistics. ``eval`` prints FID and KID and
writes them as JSON beside the samples (``<samples>_eval.json``, or ``--out``).

Files: inputs are read without pickle and every problem with them (missing, empty, not an .npz,
truncated, Python objects, wrong arrays) is a one-line UserError; outputs (statistics, generated
samples, JSON) are checked before the long work and written atomically (a temp file in the same
folder, renamed when complete, removed on failure), so no partial file is ever left under a final name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from meanflow.errors import UserError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="pt_inception-2015-12-05 state dict (default: $MEANFLOW_INCEPTION_WEIGHTS, "
                        "else the cached/downloaded pytorch-fid file)")
    from meanflow.cli.common import add_progress_arg, add_threads_arg

    p.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when available)")
    add_threads_arg(p)
    add_progress_arg(p)


def register(subparsers) -> None:
    """Add the ``ref-stats`` and ``eval`` subcommands."""
    p = subparsers.add_parser("ref-stats", help="reference FID statistics of a dataset or image set",
                              description="Compute Inception reference statistics (mu, sigma, KID features).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a meanflow.data image dataset name (e.g. mnist, cifar10)")
    src.add_argument("--images", metavar="PATH", help="a folder of images or an .npz/.npy image array")
    p.add_argument("--data-dir", default=None, help="dataset folder (with --dataset)")
    p.add_argument("--split", default="train", help="dataset split (default: train, as in the papers)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    p.add_argument("--crop", type=int, default=None, metavar="SIZE",
                   help="with --images FOLDER: ADM centre crop of every image to SIZE (ImageNet-256: 256, "
                        "the preprocessing of `meanflow encode` and of ADM's reference batch); images may "
                        "differ in size")
    p.add_argument("--kid-features", type=int, default=10000,
                   help="store up to N reference features (seeded random subset) for KID; 0: none")
    p.add_argument("--out", required=True, help="output .npz")
    _add_common(p)
    p.set_defaults(func=run_ref_stats)

    from meanflow.cli.sample import add_guidance_args, add_vae_args

    p = subparsers.add_parser("eval", help="FID and KID of samples against reference statistics",
                              description="FID/KID of an image set, or of fresh samples from a checkpoint.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", metavar="PATH", help="uint8 samples: .npz/.npy array or image folder")
    src.add_argument("--checkpoint", metavar="RUN_OR_CKPT", help="generate samples from this run/checkpoint")
    p.add_argument("--ref", required=True, metavar="PATH",
                   help="reference statistics .npz (from ref-stats), or reference images")
    p.add_argument("--num-samples", type=int, default=50000, help="samples to generate (with --checkpoint)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (with --checkpoint; default: the method's own, 1 for the one-step "
                        "methods)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, also for KID subsets")
    cls = p.add_mutually_exclusive_group()
    cls.add_argument("--class-label", type=int, default=None, help="generate one class only")
    cls.add_argument("--classes", default=None, metavar="IDS|random",
                     help="class ids, comma-separated and cycled, or 'random' (default: balanced classes)")
    p.add_argument("--ema", default=None, help="which EMA weights to sample with (see `meanflow sample`)")
    p.add_argument("--gen-batch-size", type=int, default=256, help="generation batch size")
    add_guidance_args(p)
    add_vae_args(p)
    p.add_argument("--fid-method", choices=("sqrtm", "eigh"), default="sqrtm",
                   help="matrix square root: sqrtm (pytorch-fid's, default) or eigh (same value, faster)")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--inception-score", action="store_true",
                   help="also report the Inception Score (needs weights with the classifier)")
    p.add_argument("--out", default=None, help="JSON output (default: <samples>_eval.json)")
    _add_common(p)
    p.set_defaults(func=run_eval)


def _check_common(args) -> None:
    from meanflow.cli.common import check_device, pin_threads
    from meanflow.limits import check_seed

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    check_device(args.device)
    if getattr(args, "seed", None) is not None:
        check_seed(args.seed)
    pin_threads(args)


def _join_ranks(args) -> bool:
    """Join torchrun's process group, if launched by it, so that features and generated samples are
    sharded across ranks (every rank ends with all rows, statistics are reduced in float64).

    Returns whether this process is rank 0, the one that writes files and prints.
    """
    from meanflow.training import distributed

    cuda = str(args.device).startswith("cuda")
    info = distributed.init("cuda" if cuda else "cpu")
    if info.enabled and cuda:
        args.device = f"cuda:{info.local_rank}"
    args.no_progress = args.no_progress or not info.is_main
    return info.is_main


@contextlib.contextmanager
def _ranks(args):
    """Inside: joined to torchrun's process group (see `_join_ranks`); yields whether this is rank 0."""
    from meanflow.training import distributed

    main = _join_ranks(args)
    try:
        yield main
    finally:
        distributed.shutdown()


def load_feature_model(args):
    """The FID Inception-v3 for ``args`` (a module-level hook so tests can substitute a cheaper model)."""
    from meanflow.evaluation.inception import load_inception

    return load_inception(args.inception_weights, device=args.device)


def run_ref_stats(args) -> dict:
    _check_common(args)
    with _ranks(args) as main:
        return _ref_stats(args, main)


def _ref_stats(args, main: bool) -> dict:
    from meanflow.evaluation.ref_stats import compute_ref_stats, dataset_images, load_images, save_stats
    from meanflow.utils.files import prepare_output

    if args.max_images is not None and args.max_images < 2:
        raise UserError(f"--max-images must be at least 2, got {args.max_images}")
    if main:
        prepare_output(args.out, f"--out {args.out}", create=False)
    if args.dataset and args.crop is not None:
        raise UserError("--crop applies to --images FOLDER, not to --dataset")
    if args.dataset:
        images = dataset_images(args.dataset, split=args.split, data_dir=args.data_dir,
                                download=args.download)
        source = f"dataset={args.dataset} split={args.split}"
    else:
        if args.crop is not None and args.crop < 8:
            raise UserError(f"--crop must be >= 8, got {args.crop}")
        images = load_images(args.images, "--images", crop=args.crop)
        source = f"images={args.images}" + (f" adm-crop={args.crop}" if args.crop else "")
    if args.max_images is not None and args.max_images < len(images):
        n = args.max_images
        images = images[:n] if isinstance(images, np.ndarray) else _Head(images, n)
        source += f" first={args.max_images}"
    model = load_feature_model(args)
    stats = compute_ref_stats(images, model, batch_size=args.batch_size, device=args.device,
                              kid_features=args.kid_features, progress=not args.no_progress, source=source)
    if main:
        save_stats(args.out, stats)
        print(f"reference statistics of {stats.n} images ({source}) -> {args.out}")
    return {"n": stats.n, "out": str(args.out)}


class _Head:
    """The first n images of a lazy source."""

    def __init__(self, source, n: int):
        self.source, self.n = source, n
        self.shape = getattr(source, "shape", None)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: slice):
        return self.source[slice(*index.indices(self.n))]


def _generated_path(args) -> Path:
    """Where `eval --checkpoint` writes its samples: beside the checkpoint, or in the run folder."""
    ckpt = Path(args.checkpoint)
    out_dir = ckpt if ckpt.is_dir() else ckpt.parent
    from meanflow.cli.sample import guidance_tag

    tag = guidance_tag(args).replace("-", "_")
    return out_dir / f"samples_n{args.num_samples}_steps{args.steps}_seed{args.seed}{tag}.npz"


def _generate(args, main: bool = True) -> tuple[np.ndarray, Path]:
    from meanflow.evaluation.fid import gather_rows, rank_and_world, shard_range
    from meanflow.sampling import generate_uint8
    from meanflow.training.load import load_generator

    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise UserError(f"checkpoint not found: {ckpt}")
    from meanflow.cli.sample import check_memory, class_choice, guidance_options, latent_decode

    method, net, cfg = load_generator(str(ckpt), ema=args.ema, device=args.device)
    check_memory(args.num_samples, net)
    options = guidance_options(args, method, cfg)
    args.class_label = class_choice(args)
    decode = latent_decode(args, net)  # latent runs: samples decoded by the run's VAE
    if args.steps is None:
        args.steps = method.default_steps
    # Each rank draws its own slice of the samples; gathered, they equal a single process's set.
    local = generate_uint8(method, net, args.num_samples, steps=args.steps, seed=args.seed,
                           batch_size=args.gen_batch_size, class_label=args.class_label, device=args.device,
                           rows=shard_range(args.num_samples, *rank_and_world()), sample_options=options,
                           progress=not args.no_progress, **({} if decode is None else {"decode": decode}))
    images = gather_rows(local)
    path = _generated_path(args)
    if not main:
        return images, path
    from meanflow.utils.files import atomic_files, prepare_output

    prepare_output(path, f"samples file {path}")
    with atomic_files("generated samples") as files:
        np.savez(files.tmp(path), samples=images)
    print(f"generated {len(images)} samples ({args.steps} step(s)) -> {path}")
    return images, path


def _reference(args, model):
    """Reference statistics from ``--ref``: a statistics .npz, or reference images (embedded now)."""
    from meanflow.evaluation.ref_stats import (
        IMAGE_ARRAY_KEYS,
        as_uint8_nhwc,
        compute_ref_stats,
        load_images,
        select_image_array,
        stats_from_npz,
    )
    from meanflow.utils.files import check_input_file, is_npy, open_npz

    ref = Path(args.ref)
    if ref.is_dir() or is_npy(check_input_file(ref, "--ref")):
        images = load_images(ref, "--ref")
    else:
        with open_npz(ref, "--ref") as data:
            if "mu" in data or "sigma" in data:
                return stats_from_npz(data, ref)
            key = select_image_array(data.keys)
            if key is None:
                raise UserError(f"--ref {ref} holds neither statistics (mu, sigma) nor an image array "
                                f"({', '.join(IMAGE_ARRAY_KEYS)}); found {', '.join(data.keys)}")
            images = as_uint8_nhwc(data[key], f"--ref {ref} (array {key!r})")
    return compute_ref_stats(images, model, batch_size=args.batch_size, device=args.device,
                             progress=not args.no_progress, source=f"images={ref}")


def run_eval(args) -> dict:
    _check_common(args)
    guided = getattr(args, "omega", None) is not None or getattr(args, "interval", None) is not None
    if args.samples and guided:
        raise UserError("--omega/--interval choose the guidance of generated samples: use them with "
                        "--checkpoint, not --samples")
    if args.samples and args.vae is not None:
        raise UserError("--vae decodes the samples of a latent model: use it with --checkpoint, not "
                        "--samples")
    if args.checkpoint:
        from meanflow.limits import check_steps

        if args.num_samples < 2:
            raise UserError(f"--num-samples must be at least 2, got {args.num_samples}")
        if args.steps is not None:
            check_steps(args.steps)
    if args.kid_subsets < 1 or args.kid_subset_size < 2:
        raise UserError("--kid-subsets must be >= 1 and --kid-subset-size >= 2")
    with _ranks(args) as main:
        return _eval(args, main)


def _eval(args, main: bool) -> dict:
    from meanflow.evaluation.fid import inception_score
    from meanflow.evaluation.ref_stats import check_compatible, evaluate_images, load_images
    from meanflow.utils.files import atomic_files, prepare_output

    if args.samples:
        samples_path = Path(args.samples)
        default_out = samples_path.with_name(samples_path.stem + "_eval.json")
        if samples_path.is_dir():
            default_out = samples_path.parent / (samples_path.name + "_eval.json")
    else:
        generated = _generated_path(args)
        default_out = generated.with_name(generated.stem + "_eval.json")
    out = Path(args.out) if args.out else default_out
    if main:  # unwritable outputs fail now, not after the long work
        prepare_output(out, f"--out {args.out}" if args.out else f"output {out}", create=False)
        if not args.samples:
            prepare_output(generated, f"samples file {generated}", create=False)
    if args.samples:
        images = load_images(samples_path, "--samples")
        model = load_feature_model(args)
        ref = _reference(args, model)
        check_compatible(images, ref)  # before any expensive embedding
    else:
        model = load_feature_model(args)
        ref = _reference(args, model)
        images, samples_path = _generate(args, main)
    if args.inception_score and not model.has_classifier:
        raise UserError("--inception-score: these Inception weights have no classifier (fc is NaN); "
                        "pass the full pt_inception-2015-12-05 weights")
    result = evaluate_images(images, ref, model, batch_size=args.batch_size, device=args.device,
                             progress=not args.no_progress, kid_subsets=args.kid_subsets,
                             kid_subset_size=args.kid_subset_size, seed=args.seed,
                             fid_method=args.fid_method)
    feats = result.pop("_features")
    if args.inception_score:
        with torch.inference_mode():
            logits = model.logits(torch.from_numpy(feats).to(args.device)).cpu().numpy()
        result["inception_score"], result["inception_score_std"] = inception_score(logits)
    result.update(samples=str(samples_path), ref=str(args.ref))
    if args.checkpoint:
        result.update(checkpoint=str(args.checkpoint), steps=args.steps, seed=args.seed)
        if getattr(args, "omega", None) is not None:
            result["omega"] = args.omega
        if getattr(args, "interval", None) is not None:
            result["interval"] = list(args.interval)
    if not main:
        return result
    prepare_output(out, f"--out {args.out}" if args.out else f"output {out}")
    with atomic_files("evaluation results") as files:
        files.tmp(out).write_text(json.dumps(result, indent=2) + "\n")
    line = f"FID {result['fid']:.4f}"
    if result["kid"] is not None:
        line += f"  KID {result['kid']:.6f} +- {result['kid_std']:.6f}"
    if "inception_score" in result:
        line += f"  IS {result['inception_score']:.3f} +- {result['inception_score_std']:.3f}"
    print(f"{line}  ({result['num_samples']} samples vs {result['num_reference']} reference) -> {out}")
    return result
