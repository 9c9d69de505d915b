"""`meanflow encode`: an ImageNet-style folder -> a latent cache (see `latent.cache`).

    manifest = encode_folder("imagenet/train", "cache/in256", vae="stabilityai/sd-vae-ft-mse", size=256)

Images are ADM-centre-cropped (`data.adm_crop`), encoded with the VAE, and the posterior mean and std
of each image (and of its horizontal flip with `flips=2`) are stored in shards of `shard_size` images.
Resumable: a re-run checks that the manifest describes the same files, VAE and options, then skips
every complete shard. A run that fails before its first shard leaves no manifest behind, and a manifest
whose cache holds no encoded shard yet is replaced, so fixing the input and running again always works.
Shardable: rank r of W (torchrun) encodes shards r, r + W, r + 2W, ...
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from meanflow.data.adm_crop import adm_center_crop
from meanflow.data.image_folder import EXTENSIONS
from meanflow.errors import UserError
from meanflow.latent.cache import DTYPES, Manifest, read_manifest, shard_complete, write_manifest, write_shard
from meanflow.latent.vae import encode_posterior, load_vae, vae_identity


def list_class_folder(root: str | Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Image files of an ImageNet-layout folder (one subfolder per class, sorted names -> labels 0..K-1).

    Returns:
        (files, labels int64 [N], class names); files sorted by class, then by name.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} is not a folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root} has no class folders: expected the ImageNet layout, one subfolder of images "
                        "per class")
    files, labels = [], []
    for i, d in enumerate(classes):
        found = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not found:
            raise UserError(f"class folder {d} holds no images ({', '.join(EXTENSIONS)}): remove it or add "
                            "images (labels are the sorted folder names)")
        files += found
        labels += [i] * len(found)
    return files, np.asarray(labels, dtype=np.int64), tuple(d.name for d in classes)


def files_digest(root: str | Path, files: list[Path], labels: np.ndarray) -> str:
    """sha256 (16 hex) of the relative paths and labels: a cache belongs to exactly this file list."""
    h = hashlib.sha256()
    for f, y in zip(files, labels):
        h.update(f"{f.relative_to(root).as_posix()}\t{int(y)}\n".encode())
    return h.hexdigest()[:16]


def read_image(path: Path, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the ADM crop of one file; an unreadable file is a one-line UserError."""
    try:
        with Image.open(path) as img:
            return adm_center_crop(img, size)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: cannot read image ({' '.join(str(e).split())})") from None


def latent_shape(vae, size: int) -> tuple[int, int, int]:
    """[C, h, w] of the latents of `size` x `size` images (downsampling 2^(levels - 1))."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if size % factor:
        raise UserError(f"--size {size} is not divisible by the VAE's downsampling factor {factor}")
    return int(vae.config.latent_channels), size // factor, size // factor


def _check_same(old: Manifest, new: Manifest, out: Path) -> None:
    if old.vae.fingerprint != new.vae.fingerprint:
        raise UserError(f"cache {out} was encoded with VAE {old.vae.name!r} (fingerprint "
                        f"{old.vae.fingerprint}), not {new.vae.name!r} ({new.vae.fingerprint}): use that VAE "
                        "or a new output folder")
    for key in ("files", "crop_size", "flips", "dtype", "shard_size", "latent_shape", "classes"):
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            what = "the image files differ" if key == "files" else f"{key} is {a!r} there, {b!r} now"
            raise UserError(f"cache {out} was made with other options ({what}): resume with the same "
                            "options or use a new output folder")


def encode_folder(src: str | Path, out: str | Path, *, vae: str, size: int = 256, flips: int = 1,
                  dtype: str = "float16", shard_size: int = 2048, batch_size: int = 64, device: str = "cpu",
                  rank: int = 0, world_size: int = 1, progress: bool = False,
                  echo: Callable[[str], None] = print) -> tuple[Manifest, int]:
    """Encode the shards of `src` that this rank owns and that `out` lacks.

    Args:
        src: ImageNet-layout folder. out: the cache folder (created).
        vae: VAE folder or hub id (`latent.vae.load_vae`). size: crop side (256 for ImageNet-256).
        flips: 1 (image) or 2 (image and horizontal flip). dtype: 'float16' or 'float32' storage.
        shard_size: images per shard. batch_size: images per VAE call.
        rank, world_size: this process's share (shards k with k % world_size == rank).

    Returns:
        (manifest, number of shards this call encoded).
    """
    if size < 8 or flips not in (1, 2) or dtype not in DTYPES or shard_size < 1 or batch_size < 1:
        raise UserError("encode needs --size >= 8, --batch-size >= 1, --shard-size >= 1, dtype "
                        "float16/float32")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    files, labels, classes = list_class_folder(src)
    model = load_vae(vae, device)
    manifest = Manifest(vae=vae_identity(model, vae), crop_size=size, flips=flips, dtype=dtype,
                        latent_shape=latent_shape(model, size), classes=classes, count=len(files),
                        shard_size=shard_size, files=files_digest(src, files, labels), source=str(src))
    created = not out.exists()
    if (out / "manifest.json").exists() and _any_shard_done(out):
        _check_same(read_manifest(out), manifest, out)
    elif out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    elif rank == 0:  # a new cache, or one whose manifest lists no encoded shard yet: (re)written
        write_manifest(out, manifest)
    todo = [k for k in range(rank, manifest.num_shards, world_size) if not shard_complete(out, k)]
    if rank == 0:
        echo(f"{len(files)} images in {len(classes)} classes -> {out}: {manifest.num_shards} shards of "
             f"{shard_size}, latents {list(manifest.latent_shape)} x {flips} flip(s), {dtype}; "
             f"{len(todo)} shard(s) to encode on rank 0 of {world_size}")
    try:
        _encode_shards(model, manifest, files, labels, out, todo, size=size, flips=flips, dtype=dtype,
                       batch_size=batch_size, device=device, progress=progress and rank == 0)
    except BaseException:
        if rank == 0 and not _any_shard_done(out):  # nothing encoded: leave no manifest to block a re-run
            if created:
                shutil.rmtree(out, ignore_errors=True)
            else:
                (out / "manifest.json").unlink(missing_ok=True)
        raise
    return manifest, len(todo)


def _any_shard_done(out: Path) -> bool:
    """Whether cache folder `out` holds at least one completely encoded shard."""
    folder = out / "shards"
    return folder.is_dir() and any(p.suffix == ".done" for p in folder.iterdir())


def _encode_shards(model, manifest: Manifest, files: list[Path], labels: np.ndarray, out: Path,
                   todo: list[int], *, size: int, flips: int, dtype: str, batch_size: int, device: str,
                   progress: bool) -> None:
    """Encode shards `todo` of `manifest` (crop, VAE posterior of each image and its flip) into `out`."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="encode", unit="shard", dynamic_ncols=True)
    try:
        for k in todo:
            lo, hi = manifest.shard_rows(k)
            means, stds = [], []
            for b in range(lo, hi, batch_size):
                imgs = np.stack([read_image(files[i], size) for i in range(b, min(b + batch_size, hi))])
                if flips == 2:  # [image_0, ..., image_n, flip_0, ..., flip_n] in one VAE call
                    imgs = np.concatenate([imgs, imgs[:, :, ::-1]])
                mean, std = encode_posterior(model, imgs, device)
                n = len(imgs) // flips
                means.append(mean.view(flips, n, *mean.shape[1:]).transpose(0, 1).numpy())
                stds.append(std.view(flips, n, *std.shape[1:]).transpose(0, 1).numpy())
            write_shard(out, k, np.concatenate(means).astype(dtype), np.concatenate(stds).astype(dtype),
                        labels[lo:hi])
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
