"""Shared pieces of the CLI tests (a uniquely named module, importable from every test here)."""

import torch
from torch import nn

# A tiny digits run: 3 steps of a 16-wide MLP, no progress bar, no TensorBoard, one thread.
TINY = ["--set", "network={name: mlp, kwargs: {hidden: 16, depth: 1}}", "--steps", "3", "--batch-size", "16",
        "--set", "logging.progress=false", "--set", "logging.tensorboard=false",
        "--set", "logging.sample_count=16", "--set", "training.num_threads=1"]


class CheapFeatures(nn.Module):
    """Stand-in for the Inception network in the CLI plumbing tests: [B, 3, H, W] uint8 -> [B, 6]."""

    has_classifier = False

    def forward(self, x):
        f = x.float() / 255
        return torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3))], 1)
