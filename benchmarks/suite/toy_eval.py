"""Measurements of a 2-D model: distances between generated samples and held-out points.

For each sampling-step count k of an entry: ``n`` samples (noise seeded by the run's seed) against the
data set's ``test`` draw of ``n`` points (seed 0, the same for every run): sliced Wasserstein-2 (256
fixed directions), energy distance, and k-NN precision / recall (k = 3). The noise floor (``method:
"data"``) is a fresh draw of the distribution (seed + 1) against the same held-out points.
"""

from __future__ import annotations

import dataclasses
import time

import torch

SAMPLE_SEED = 10_000  # sampling noise of seed s: SAMPLE_SEED + s (never the training stream)


class CountCalls(torch.nn.Module):
    """Wraps a network and counts its forward calls (a sampler's NFE per batch)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # what samplers read off a network (meanflow_shape, ...)
            return getattr(self.net, name)


_RADII: dict = {}  # held-out set's data pointer -> (the set, its k-NN radii), per process
_HELD: dict = {}


def heldout(dataset: str, n: int, seed: int = 0) -> torch.Tensor:
    """The held-out points ``[n, 2]``: the data set's ``test`` split."""
    from meanflow.data import build_dataset

    return build_dataset(dataset, split="test", n=n, seed=seed).x


def distances(x: torch.Tensor, held: torch.Tensor) -> dict[str, float]:
    """``{sliced_w2, energy, precision, recall}`` of samples ``x`` [N, 2] against ``held`` [M, 2]."""
    from meanflow.evaluation.toy_metrics import (
        energy_distance,
        knn_precision_recall,
        knn_radii,
        sliced_wasserstein,
    )

    key = (held.data_ptr(), tuple(held.shape))  # the held-out set's radii, once per process
    if key not in _RADII:
        _RADII[key] = (held, knn_radii(held, 3))
    prec, rec = knn_precision_recall(x, held, k=3, real_radii=_RADII[key][1])
    return {"sliced_w2": sliced_wasserstein(x, held), "energy": energy_distance(x, held),
            "precision": prec, "recall": rec}


def _held(dataset: str, n: int) -> torch.Tensor:
    """`heldout(dataset, n)`, kept for the process (so that its k-NN radii are computed once)."""
    if (dataset, n) not in _HELD:
        _HELD[dataset, n] = heldout(dataset, n)
    return _HELD[dataset, n]


def noise_floor(dataset: str, n: int, seed: int) -> list[dict]:
    """Partial records of the ``data`` row: a fresh draw against the held-out points."""
    held = heldout(dataset, n)
    fresh = heldout(dataset, n, seed=seed + 1)
    return [{"nfe": None, "metric": m, "value": v, "n": n} for m, v in distances(fresh, held).items()]


def measure(ckpt, dataset: str, nfe: tuple[int, ...], seed: int, n: int, sample_kwargs=(),
            save_png=None) -> list[dict]:
    """Partial records (nfe, metric, value and extras) of the checkpoint `ckpt` (its first EMA).

    Args:
        ckpt: checkpoint file.
        dataset: 2-D distribution name.
        nfe: sampling-step counts.
        seed: the run's seed (sampling noise ``SAMPLE_SEED + seed``).
        n: samples (and held-out points).
        sample_kwargs: method options replaced at sampling time.
        save_png: optional ``k -> path`` of a scatter plot per step count.
    """
    from meanflow.sampling import generate
    from meanflow.training.load import load_generator

    method, net, _ = load_generator(ckpt)
    method = dataclasses.replace(method, **dict(sample_kwargs))
    counted = CountCalls(net)
    held = heldout(dataset, n)
    out = []
    for k in nfe:
        t0, counted.calls = time.perf_counter(), 0
        x = generate(method, counted, 0, n, steps=k, seed=SAMPLE_SEED + seed, batch_size=n, shape=(2,),
                     num_classes=0)
        eval_s = time.perf_counter() - t0
        extra = {"n": n, "nfe_measured": counted.calls, "sample_s": round(eval_s, 3)}
        out += [{"nfe": k, "metric": m, "value": v, **extra} for m, v in distances(x, held).items()]
        if save_png is not None:
            from meanflow.utils.images import save_points

            save_points(x, save_png(k), reference=held)
    return out
