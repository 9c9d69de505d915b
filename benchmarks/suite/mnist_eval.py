"""Measurements of an MNIST model: FID and KID of generated digits against the 10,000 test images.

Samples: ``n`` class-balanced images (labels ``i % 10``, noise seeded by ``SAMPLE_SEED + seed``) from
the first EMA, quantised to uint8, through the FID Inception-v3 (pool3, 28x28 resized to 299).
Reference: the statistics (and KID features) of every MNIST test image, computed once and cached in
chunks (an interrupted computation resumes) under ``runs/suite/ref/``. FID is biased upward at small
``n`` (about 1/n): compare rows at the same ``n``; KID is unbiased, and its standard deviation over
100 subsets of 1,000 is kept as ``kid_std``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.suite.records import REPO
from benchmarks.suite.toy_eval import SAMPLE_SEED, CountCalls

_BESIDE = REPO.parent / "shared" / "data"  # sessions and CI check the repo out next to shared/
SHARED = _BESIDE if _BESIDE.is_dir() else Path("/work/shared/data")
INCEPTION = SHARED / "inception" / "pt_inception-2015-12-05-pool3only-fcNaN.pth"
REF = REPO / "runs" / "suite" / "ref" / "mnist-test-all.npz"
GRIDS = REPO / "docs" / "quality" / "suite"
CHUNK = 500
_CACHE: dict = {}


def inception(device: str = "cpu"):
    """The FID Inception network on `device`: ``$MEANFLOW_INCEPTION_WEIGHTS``, else the shared copy
    (loaded once per device)."""
    from meanflow.evaluation import load_inception

    if device not in _CACHE:
        own = os.environ.get("MEANFLOW_INCEPTION_WEIGHTS") or not INCEPTION.is_file()
        weights = None if own else str(INCEPTION)
        _CACHE[device] = load_inception(weights, device=device)
    return _CACHE[device]


@contextlib.contextmanager
def full_precision(device: str):
    """CUDA convolutions and matrix products in float32, not TF32, while measuring: Inception features
    on a GPU then match the CPU's to float rounding (TF32 moves them by ~1e-3), so rows measured on
    either device compare."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def reference(path: Path = REF, images: np.ndarray | None = None, source: str = "mnist test",
              device: str = "cpu"):
    """Inception statistics of the MNIST test set (or of `images`, named `source`), computed on `device`
    in chunks (an interrupted computation resumes from them) and cached at `path`; the chunks are
    removed."""
    from meanflow.evaluation import RefStats, dataset_images, extract_features, load_stats, save_stats
    from meanflow.evaluation.fid import feature_statistics

    if path.is_file():
        return load_stats(path)
    if images is None:
        shared = SHARED / "mnist"  # else the dataset's own folder ($MEANFLOW_CACHE/mnist)
        images = dataset_images("mnist", split="test", data_dir=str(shared) if shared.is_dir() else None)
    chunks = path.with_name(path.stem + ".chunks")
    chunks.mkdir(parents=True, exist_ok=True)
    feats = []
    for i in range(0, len(images), CHUNK):
        f = chunks / f"{i:06d}.npy"
        if not f.is_file():
            with full_precision(device):
                arr = extract_features(images[i:i + CHUNK], inception(device), batch_size=50,
                                       device=device, progress=False)
            tmp = f.with_name(f".{f.name}.tmp{os.getpid()}.npy")
            np.save(tmp, arr)
            os.replace(tmp, f)
        feats.append(np.load(f))
    feats = np.concatenate(feats)
    mu, sigma = feature_statistics(feats)
    save_stats(path, RefStats(mu, sigma, len(feats), feats.astype(np.float32), tuple(images.shape[1:]),
                              f"{source} ({len(feats)} images)"))
    for f in chunks.iterdir():
        f.unlink()
    chunks.rmdir()
    return load_stats(path)


def measure(ckpt, entry, seed: int, n: int, run_dir: str, ref_path: Path = REF,
            variant: str = "", device: str = "cpu") -> list[dict]:
    """Partial records (``fid`` and ``kid`` per sampling-step count of `entry`) of checkpoint `ckpt`,
    sampled and embedded on `device`; a 10 x 10 grid of seed 0 goes to
    ``docs/quality/suite/mnist-<entry>[-<variant>]-<k>step.png``."""
    from meanflow.evaluation import evaluate_images
    from meanflow.sampling import generate_uint8
    from meanflow.training.load import load_generator
    from meanflow.utils.images import make_grid, save_png

    ref = reference(ref_path, device=device)
    method, net, _ = load_generator(ckpt, device=device)
    method = dataclasses.replace(method, **dict(entry.sample_kwargs))
    counted = CountCalls(net)
    out = []
    for k in entry.mnist_nfe:
        t0, counted.calls = time.perf_counter(), 0
        with full_precision(device):
            images = generate_uint8(method, counted, n, steps=k, seed=SAMPLE_SEED + seed, batch_size=250,
                                    device=device)
            sample_s = time.perf_counter() - t0
            res = evaluate_images(images, ref, inception(device), batch_size=50, device=device,
                                  progress=False, kid_subset_size=min(1000, n), seed=seed, fid_method="eigh")
        if seed == 0:
            name = f"{entry.name}-{variant}" if variant else entry.name
            save_png(make_grid(images[:100], ncol=10), GRIDS / f"mnist-{name}-{k}step.png")
        extra = {"n": n, "n_ref": int(ref.n), "nfe_measured": counted.calls / -(-n // 250),
                 "sample_s": round(sample_s, 2)}
        out.append({"nfe": k, "metric": "fid", "value": res["fid"], **extra})
        out.append({"nfe": k, "metric": "kid", "value": res["kid"], "kid_std": res["kid_std"], **extra})
    return out
