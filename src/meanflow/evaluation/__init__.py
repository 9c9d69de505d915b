"""Evaluation: FID / KID / Inception Score with the FID Inception-v3, and reference statistics.

Protocol (SPEC section 1): samples quantised to uint8, pool3 features of the TF "2015-12-05"
Inception graph (pytorch-fid's port), Fréchet distance against reference statistics.
"""

from meanflow.evaluation.fid import (
    distributed_statistics,
    extract_features,
    feature_statistics,
    frechet_distance,
    gather_rows,
    inception_score,
    kernel_inception_distance,
    mmd2_unbiased,
    polynomial_kernel,
)
from meanflow.evaluation.inception import InceptionV3, load_inception, resolve_weights
from meanflow.evaluation.ref_stats import (
    ImageFolder,
    RefStats,
    compute_ref_stats,
    dataset_images,
    evaluate_images,
    load_images,
    load_stats,
    quantize_uint8,
    save_stats,
)

__all__ = [
    "ImageFolder",
    "InceptionV3",
    "RefStats",
    "compute_ref_stats",
    "dataset_images",
    "distributed_statistics",
    "evaluate_images",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "gather_rows",
    "inception_score",
    "kernel_inception_distance",
    "load_images",
    "load_inception",
    "load_stats",
    "mmd2_unbiased",
    "polynomial_kernel",
    "quantize_uint8",
    "resolve_weights",
    "save_stats",
]
