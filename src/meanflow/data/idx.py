"""MNIST and Fashion-MNIST: the standard gzip-compressed IDX files, md5-verified.

IDX format (LeCun): 2 zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions
``d``, then ``d`` big-endian uint32 sizes, then the values in C order.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from meanflow.data.files import dataset_dir, locate, verify_file
from meanflow.data.types import ImageData, pad_images, uint8_to_unit
from meanflow.errors import UserError

_MAX_BYTES = 1 << 32  # refuse absurd headers instead of trying to allocate them

# name -> (mirrors, {file: md5}, class names); md5s are the published ones (torchvision).
_SOURCES = {
    "mnist": (
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        tuple(str(i) for i in range(10)),
    ),
    "fashion-mnist": (
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"),
    ),
}
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read a gzip-compressed (``.gz``) or raw IDX file of unsigned bytes.

    Args:
        path: the file.
        ndim: expected number of dimensions (3 for images, 1 for labels), checked if given.

    Returns:
        uint8 array with the shape given in the header.

    Raises:
        UserError: not an IDX file, wrong type or rank, truncated, trailing bytes, or a corrupt gzip.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0":
                raise UserError(f"{path}: not an IDX file (bad magic number)")
            if head[2] != 0x08:
                raise UserError(f"{path}: IDX type 0x{head[2]:02x} unsupported (only unsigned bytes, 0x08)")
            d = head[3]
            if ndim is not None and d != ndim:
                raise UserError(f"{path}: IDX file has {d} dimensions, expected {ndim}")
            dims_raw = f.read(4 * d)
            if len(dims_raw) < 4 * d:
                raise UserError(f"{path}: truncated IDX header")
            shape = struct.unpack(f">{d}I", dims_raw)
            size = int(np.prod(shape, dtype=np.uint64))
            if size > _MAX_BYTES:
                raise UserError(f"{path}: IDX header claims {size} bytes, refusing")
            data = f.read(size)
            if len(data) < size:
                raise UserError(f"{path}: truncated IDX data ({len(data)} of {size} bytes)")
            if f.read(1):
                raise UserError(f"{path}: unexpected bytes after the IDX data")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{path}: corrupt or truncated gzip file ({e})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load_idx_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    pad_to: int | None = None,
    verify: bool = True,
) -> ImageData:
    """Load ``"mnist"`` or ``"fashion-mnist"`` as 1-channel images in [-1, 1].

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: folder holding the four ``*-ubyte.gz`` files; default ``cache_dir() / name``.
        download: fetch missing files from the standard mirrors (md5-checked, atomic).
        pad_to: pad the 28x28 images with black (-1) to ``pad_to x pad_to`` (e.g. 32).
        verify: check each file's published md5 before parsing it.

    Returns:
        ImageData with x [N, 1, 28, 28] (or [N, 1, pad_to, pad_to]), y long [N] in [0, 10).
    """
    mirrors, md5s, class_names = _SOURCES[name]
    folder = dataset_dir(name, data_dir)
    arrays = []
    for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
        filename = f"{_PREFIX[split]}-{kind}-ubyte.gz"
        path = locate(folder, filename, dataset=name, urls=[m + filename for m in mirrors],
                      md5=md5s[filename], download=download)
        if verify:
            verify_file(path, md5s[filename])
        arrays.append(read_idx(path, ndim))
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise UserError(
            f"{name} ({split}): {images.shape[0]} images but {labels.shape[0]} labels in {folder}"
        )
    if labels.size and labels.max() >= len(class_names):
        raise UserError(f"{name} ({split}): label {labels.max()} out of range in {folder}")
    x = pad_images(uint8_to_unit(images, layout="NCHW"), pad_to)
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageData(x=x, y=y, num_classes=len(class_names), name=name, class_names=class_names)
