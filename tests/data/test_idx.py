import gzip
import shutil
import struct

import numpy as np
import pytest
import torch
from data_testfiles import shared_dir

from meanflow.data import build_dataset
from meanflow.data.files import file_digest
from meanflow.data.idx import _SOURCES, read_idx
from meanflow.errors import UserError


def write_idx(path, arr, *, compress=True):
    data = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(data)
    return path


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_files_md5_match_published(name):
    folder = shared_dir(name)
    for filename, md5 in _SOURCES[name][1].items():
        assert file_digest(folder / filename) == md5


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_real_dataset_shapes_ranges(name, split, n):
    ds = build_dataset(name, split, data_dir=shared_dir(name))
    assert ds.x.shape == (n, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.x.min() == -1.0 and ds.x.max() == 1.0
    assert ds.y.dtype == torch.long and ds.y.shape == (n,)
    assert set(ds.y.unique().tolist()) == set(range(10)) and ds.num_classes == 10
    assert ds.image_shape == (1, 28, 28)


def test_pad_to_32_keeps_digit_centred():
    d = shared_dir("mnist")
    a = build_dataset("mnist", "test", data_dir=d)
    b = build_dataset("mnist", "test", data_dir=d, pad_to=32)
    assert b.x.shape == (10000, 1, 32, 32)
    assert torch.equal(b.x[:, :, 2:30, 2:30], a.x)
    assert (b.x[:, :, :2] == -1).all() and (b.x[:, :, :, 30:] == -1).all()
    with pytest.raises(UserError, match="pad_to=20"):
        build_dataset("mnist", "test", data_dir=d, pad_to=20)


def test_read_idx_round_trip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", arr), 3), arr)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.idx", arr, compress=False)), arr)


def test_truncated_gzip_is_a_user_error(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    good = write_idx(tmp_path / "good.gz", arr).read_bytes()
    bad = tmp_path / "bad.gz"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match=r"bad\.gz.*(truncated|corrupt)"):
        read_idx(bad, 3)


def test_truncated_idx_payload_is_a_user_error(tmp_path):
    arr = np.zeros((10, 28, 28), dtype=np.uint8)
    data = bytes([0, 0, 8, 3]) + struct.pack(">3I", *arr.shape) + arr.tobytes()[:-7]
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(data)
    with pytest.raises(UserError, match=r"short\.gz: truncated IDX data"):
        read_idx(tmp_path / "short.gz", 3)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"hello, I am not an IDX file at all", "not an IDX file"),
        (bytes([0, 0, 0x0D, 3]) + b"\0" * 12, "unsupported"),
        (bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + b"abc", "1 dimensions, expected 3"),
        (bytes([0, 0, 8, 3]) + b"\0\0", "truncated IDX header"),
        (bytes([0, 0, 8, 3]) + struct.pack(">3I", 1, 1, 2) + b"abcd", "unexpected bytes"),
    ],
)
def test_non_idx_files_are_user_errors(tmp_path, content, match):
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as f:
        f.write(content)
    with pytest.raises(UserError, match=match):
        read_idx(p, 3)


def test_plain_file_with_gz_name_is_user_error(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz: corrupt"):
        read_idx(p, 3)


def test_missing_file_names_file_and_fix(tmp_path):
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz not found.*download=True"):
        build_dataset("mnist", data_dir=tmp_path)


def test_wrong_md5_is_rejected_before_parsing(tmp_path):
    src = shared_dir("mnist")
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(src / f, tmp_path / f)
    # A valid IDX file, but not the official one.
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(10000, dtype=np.uint8))
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz: md5 checksum mismatch"):
        build_dataset("mnist", "test", data_dir=tmp_path)
    # verify=False accepts the user's own (valid) file.
    ds = build_dataset("mnist", "test", data_dir=tmp_path, verify=False)
    assert (ds.y == 0).all()


def test_count_mismatch_is_user_error(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(UserError, match="4 images but 3 labels"):
        build_dataset("fashion-mnist", "test", data_dir=tmp_path, verify=False)
