"""Shared pieces of the latent-path tests: a tiny random AutoencoderKL saved as a VAE folder, and a
small ImageNet-layout image folder (a few classes, a few PNGs of mixed sizes each)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def tiny_vae_folder(path: Path, seed: int = 0) -> Path:
    """Save a randomly initialised AutoencoderKL (2 levels of 32 channels, 4 latent channels,
    downsampling 2) with `save_pretrained` into `path`; no weights are downloaded."""
    pytest.importorskip("diffusers")
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32),
                        layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=32)
    vae.save_pretrained(str(path))
    return path


def image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 3, seed: int = 0) -> Path:
    """root/<class>/<i>.png, RGB, sizes between 24x40 and 70x50 (some below, some above 32)."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 24), (50, 70), (36, 36), (64, 48)]
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[(c + i) % len(sizes)]
            base = rng.integers(0, 256, 3)
            arr = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i:03d}.png")
    return root


class CheapFeatures:
    """Stand-in for the FID Inception in CLI round trips: uint8 [B, 3, H, W] -> [B, 6] (channel means and
    standard deviations)."""

    has_classifier = False

    def __call__(self, x):
        import torch

        f = x.float() / 255
        return torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3))], 1)

    def to(self, *a, **k):
        return self

    def eval(self):
        return self


# `meanflow train` overrides of a tiny class-conditional run on a latent cache of 16x16x4 latents:
# the imagenet-b4 preset (latent_cache data, guidance, AdamW) with a 1-block DiT/4 and 3 steps.
TINY_LATENT_RUN = [
    "--preset", "imagenet-b4", "--steps", "3", "--batch-size", "6",
    "--set", "network={name: dit, kwargs: {input_size: 16, in_channels: 4, patch_size: 4, hidden_size: 32, "
             "depth: 1, num_heads: 2, num_classes: 3}}",
    "--set", "training.num_threads=1", "--set", "logging.progress=false",
    "--set", "logging.tensorboard=false", "--set", "logging.sample_count=3",
    "--set", "training.checkpoint_every=100"]
