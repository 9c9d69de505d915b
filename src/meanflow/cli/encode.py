"""`meanflow encode IMAGE_FOLDER OUT`: VAE posteriors of an ImageNet-layout folder -> a latent cache.

    meanflow encode imagenet/train cache/in256 --flips            # one process
    torchrun --nproc-per-node 8 -m meanflow.cli encode imagenet/train cache/in256 --flips --device cuda

Needs the optional extra `pip install 'meanflow[latent]'` (diffusers). See `meanflow.latent.encode`.
"""

from __future__ import annotations

from meanflow.cli.common import add_threads_arg, check_device, pin_threads


def register(subparsers) -> None:
    from meanflow.latent.vae import DEFAULT_VAE

    p = subparsers.add_parser(
        "encode", help="encode an image folder into a latent cache (VAE posteriors)",
        description="ADM centre crop, SD-VAE encoding, posterior mean and std stored in memory-mapped .npy "
                    "shards + manifest.json; resumable, and shared over the ranks of torchrun. Train on it "
                    "with data.name=latent_cache.")
    p.add_argument("images", metavar="IMAGE_FOLDER",
                   help="one subfolder of images per class (ImageNet layout)")
    p.add_argument("out", metavar="OUT", help="cache folder (created; re-running continues it)")
    p.add_argument("--vae", default=DEFAULT_VAE,
                   help=f"AutoencoderKL folder or Hugging Face hub id (default {DEFAULT_VAE})")
    p.add_argument("--size", type=int, default=256, help="ADM centre-crop size in pixels (default 256)")
    p.add_argument("--flips", action="store_true", help="also store each image's horizontal flip")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="storage of mean and std (default float16)")
    p.add_argument("--shard-size", type=int, default=2048, help="images per shard (default 2048)")
    p.add_argument("--batch-size", type=int, default=64, help="images per VAE call (default 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun: the local GPU)")
    add_threads_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from meanflow.latent.encode import encode_folder
    from meanflow.latent.vae import require_diffusers
    from meanflow.training import distributed

    check_device(args.device)
    require_diffusers()
    pin_threads(args)
    cuda = str(args.device).startswith("cuda")
    info = distributed.init("cuda" if cuda else "cpu")
    device = f"cuda:{info.local_rank}" if cuda and info.enabled else args.device
    try:
        manifest, done = encode_folder(args.images, args.out, vae=args.vae, size=args.size,
                                       flips=2 if args.flips else 1, dtype=args.dtype,
                                       shard_size=args.shard_size, batch_size=args.batch_size, device=device,
                                       rank=info.rank, world_size=info.world_size,
                                       progress=not args.no_progress)
        if info.enabled:
            torch.distributed.barrier()
        if info.is_main:
            from meanflow.latent.cache import open_cache

            open_cache(args.out)  # every shard of every rank is there
            print(f"latent cache complete: {manifest.count} images -> {args.out} (train with "
                  f"data.name=latent_cache data.data_dir={args.out})")
    finally:
        distributed.shutdown()
    return 0
