"""Sharded feature extraction under torch.distributed (gloo, 2 CPU processes) equals one process."""

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from meanflow.evaluation.fid import (
    distributed_statistics,
    extract_features,
    feature_statistics,
    rank_and_world,
    shard_range,
)


def _images(n=7):
    return np.random.default_rng(0).integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)


def _features(x: torch.Tensor) -> torch.Tensor:
    # A cheap deterministic stand-in for the network: [B, 3, 4, 4] uint8 -> [B, 12].
    f = x.float().flatten(1)
    return torch.cat([f[:, :6], f[:, -6:] ** 1.5], 1)


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        images = _images()
        gathered = extract_features(images, _features, batch_size=2, progress=False)
        local = extract_features(images, _features, batch_size=2, progress=False, gather=False)
        mu, sigma, n = distributed_statistics(local)
        np.savez(f"{out_dir}/rank{rank}.npz", gathered=gathered, local=local, mu=mu, sigma=sigma, n=n)
    finally:
        dist.destroy_process_group()


def test_shard_range_covers_everything_once():
    for n in (0, 1, 5, 7, 100):
        for world in (1, 2, 3, 8):
            idx = [i for r in range(world) for i in range(*shard_range(n, r, world))]
            assert idx == list(range(n))


def test_single_process_is_rank_0_of_1():
    assert rank_and_world() == (0, 1)
    feats = extract_features(_images(), _features, batch_size=3, progress=False)
    np.testing.assert_array_equal(feats, _features(torch.from_numpy(_images()).permute(0, 3, 1, 2)).numpy())
    mu, sigma, n = distributed_statistics(feats)
    assert n == 7
    np.testing.assert_allclose(sigma, feature_statistics(feats)[1], rtol=1e-12)


def test_two_ranks_match_one(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    expected = extract_features(_images(), _features, batch_size=2, progress=False)
    mu_ref, sigma_ref = feature_statistics(expected)
    for rank in range(world):
        got = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_array_equal(got["gathered"], expected)  # every rank: all rows, in order
        start, stop = shard_range(len(expected), rank, world)
        np.testing.assert_array_equal(got["local"], expected[start:stop])
        assert int(got["n"]) == len(expected)
        assert got["mu"].dtype == np.float64 and got["sigma"].dtype == np.float64
        np.testing.assert_allclose(got["mu"], mu_ref, rtol=1e-12)
        np.testing.assert_allclose(got["sigma"], sigma_ref, rtol=1e-10, atol=1e-9)
