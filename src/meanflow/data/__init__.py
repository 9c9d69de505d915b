"""Datasets (images, latents, 2-D points) behind one registry, and a resumable batch sampler.

    ds = build_dataset("mnist", split="train", data_dir="/path/to/mnist", pad_to=32)
    ds.x  # float32 [N, 1, 32, 32] in [-1, 1];  ds.y  # long [N];  ds.num_classes == 10
"""

from meanflow.data.loader import Batch, BatchLoader, InfiniteSampler
from meanflow.data.registry import DATASETS, DatasetSpec, build_dataset, list_datasets
from meanflow.data.types import ImageData, PointData

__all__ = [
    "DATASETS",
    "Batch",
    "BatchLoader",
    "DatasetSpec",
    "ImageData",
    "InfiniteSampler",
    "PointData",
    "build_dataset",
    "list_datasets",
]
