import gzip
import hashlib

import pytest

from meanflow.data import build_dataset, idx
from meanflow.data.files import download_file, locate
from meanflow.errors import UserError


def test_download_checks_md5_and_leaves_nothing_behind(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(UserError, match=r"could not download file\.bin: .*md5 mismatch"):
        download_file([src.as_uri()], dest, md5="0" * 32)
    assert list(dest.parent.iterdir()) == []  # no partial or temporary file remains
    download_file([src.as_uri()], dest, md5=hashlib.md5(b"payload").hexdigest())
    assert dest.read_bytes() == b"payload"


def test_download_falls_back_to_next_mirror(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"ok")
    dest = tmp_path / "dest.bin"
    download_file([(tmp_path / "missing.bin").as_uri(), src.as_uri()], dest)
    assert dest.read_bytes() == b"ok"


def test_all_mirrors_failing_is_one_line_user_error(tmp_path):
    with pytest.raises(UserError) as e:
        download_file([(tmp_path / "nope").as_uri()], tmp_path / "d" / "x.bin")
    assert "x.bin" in str(e.value) and "\n" not in str(e.value)


def test_locate_without_download_explains(tmp_path):
    with pytest.raises(UserError, match=r"f\.gz not found; pass download=True"):
        locate(tmp_path, "f.gz", dataset="d", urls=["http://x/f.gz"])
    with pytest.raises(UserError, match="cannot be downloaded"):
        locate(tmp_path, "f.gz", dataset="d", download=True)


def test_mnist_download_into_cache(tmp_path, monkeypatch):
    # Serve two small valid IDX files from a local "mirror" and patch their md5s in.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    md5s = {}
    header = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28])
    for fname, payload in (
        ("t10k-images-idx3-ubyte.gz", header + bytes(2 * 784)),
        ("t10k-labels-idx1-ubyte.gz", bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 7])),
    ):
        with gzip.open(mirror / fname, "wb") as f:
            f.write(payload)
        md5s[fname] = hashlib.md5((mirror / fname).read_bytes()).hexdigest()
    monkeypatch.setitem(idx._SOURCES, "mnist", ((mirror.as_uri() + "/",), md5s, idx._SOURCES["mnist"][2]))
    ds = build_dataset("mnist", "test", download=True)
    assert ds.x.shape == (2, 1, 28, 28) and ds.y.tolist() == [3, 7]
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(md5s)
