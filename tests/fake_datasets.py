"""A stand-in for `meanflow.data.build_dataset` that serves fixed uint8 images and records its calls."""

import sys
import types

import numpy as np
import torch


def patch_build_dataset(monkeypatch, u8: np.ndarray) -> tuple[types.SimpleNamespace, list[tuple]]:
    """Make `meanflow.data.build_dataset` return `u8` ([N, C, H, W] uint8) scaled to [-1, 1].

    Returns the fake dataset (its fields may be changed afterwards) and the list that each call
    appends `(name, split, data_dir, download)` to.
    """
    fake = types.SimpleNamespace(x=torch.from_numpy(u8).float() / 127.5 - 1, is_latent=False)
    calls: list[tuple] = []

    def build_dataset(name, split="train", data_dir=None, download=False):
        calls.append((name, split, data_dir, download))
        return fake

    monkeypatch.setitem(sys.modules, "meanflow.data", types.SimpleNamespace(build_dataset=build_dataset))
    return fake, calls
