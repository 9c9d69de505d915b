"""Shared pieces of the pairs / reflow tests: a tiny velocity network and a pairs folder written by it."""

import math

import torch

from meanflow.networks import build_network
from meanflow.reflow_pairs import PairsJob, write_pairs

SOURCE = {"run": "tiny", "checkpoint": "tiny", "step": 0, "config_sha256": "0" * 64,
          "method": "flow_matching", "ema": None, "weights": "model/"}


def tiny_velocity_net(shape=(2,), num_classes=0, seed=0):
    """A 16-wide MLP velocity field with the attributes `load_generator` sets (shape, classes)."""
    torch.manual_seed(seed)
    net = build_network("mlp", dim=math.prod(shape), hidden=16, depth=1, num_classes=num_classes).eval()
    net.meanflow_shape, net.meanflow_num_classes, net.meanflow_is_latent = tuple(shape), num_classes, False
    return net


def write_tiny_pairs(folder, n=40, shard_size=16, batch_size=8, shape=(2,), num_classes=0, solver="heun",
                     steps=4, seed=0, net=None, **job):
    """Write `n` pairs of a tiny net into `folder`; returns the manifest."""
    net = net if net is not None else tiny_velocity_net(shape, num_classes)
    spec = PairsJob(num_pairs=n, shard_size=shard_size, batch_size=batch_size, solver=solver, steps=steps,
                    seed=seed, **job)
    return write_pairs(net, folder, spec, source=SOURCE, echo=lambda s: None)
