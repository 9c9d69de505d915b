import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from data_testfiles import shared_dir

from meanflow.data import build_dataset, cifar
from meanflow.data.safe_pickle import safe_loads
from meanflow.errors import UserError

N = 7  # images per fake batch


def fake_batch(seed: int, numpy1_names: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        "batch_label": f"fake batch {seed}",
        "data": rng.integers(0, 256, (N, 3072), dtype=np.uint8),
        "labels": rng.integers(0, 10, N).tolist(),
        "filenames": [f"img_{i}.png" for i in range(N)],
    }
    raw = pickle.dumps(batch, protocol=2)
    if numpy1_names:  # what Python 2 / numpy 1 wrote: the GLOBAL opcode names numpy.core
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return raw


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """A cifar-10-batches-py folder of tiny fake batches whose md5s are patched into the loader."""
    folder = tmp_path / "cifar" / cifar.BATCH_DIR
    folder.mkdir(parents=True)
    md5s = {}
    for k, name in enumerate(cifar.BATCH_MD5):
        raw = fake_batch(k, numpy1_names=k % 2 == 0)
        (folder / name).write_bytes(raw)
        md5s[name] = hashlib.md5(raw).hexdigest()
    monkeypatch.setattr(cifar, "BATCH_MD5", md5s)
    return folder.parent


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loads_python_batches(fake_cifar):
    train = build_dataset("cifar10", "train", data_dir=fake_cifar)
    test = build_dataset("cifar10", "test", data_dir=fake_cifar)
    assert train.x.shape == (5 * N, 3, 32, 32) and test.x.shape == (N, 3, 32, 32)
    assert train.x.min() >= -1 and train.x.max() <= 1 and train.num_classes == 10
    raw = pickle.loads(fake_batch(5))  # test_batch was written from seed 5
    expect = torch.from_numpy(raw["data"].reshape(N, 3, 32, 32).astype(np.float32)) / 127.5 - 1
    assert torch.equal(test.x, expect)
    assert test.y.tolist() == raw["labels"]


def test_batches_directly_in_data_dir(fake_cifar):
    ds = build_dataset("cifar10", "test", data_dir=fake_cifar / cifar.BATCH_DIR)
    assert len(ds) == N


def test_malicious_pickle_is_rejected_without_running(tmp_path):
    marker = tmp_path / "pwned"
    raw = pickle.dumps({"data": Evil(marker)}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        safe_loads(raw)
    with pytest.raises(UserError, match=r"evil_batch: rejected.*not allowed"):
        cifar.parse_batch(raw, "evil_batch", md5=hashlib.md5(raw).hexdigest())
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_rejected_in_every_protocol(tmp_path, protocol):
    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError):
        safe_loads(pickle.dumps([1, Evil(marker)], protocol=protocol))
    assert not marker.exists()


def test_codecs_encode_only_latin1():
    # Python 3 protocol-2 bytes go through _codecs.encode(s, "latin1"); other codecs are refused.
    assert safe_loads(pickle.dumps(b"\x00\xff", protocol=2)) == b"\x00\xff"
    evil = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcX\x06\x00\x00\x00rot_13\x86R."
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        safe_loads(evil)


def test_malicious_batch_fails_md5_before_unpickling(fake_cifar, tmp_path):
    marker = tmp_path / "pwned"
    (fake_cifar / cifar.BATCH_DIR / "test_batch").write_bytes(pickle.dumps(Evil(marker), protocol=2))
    with pytest.raises(UserError, match=r"test_batch: md5 checksum mismatch"):
        build_dataset("cifar10", "test", data_dir=fake_cifar)
    with pytest.raises(UserError, match="not allowed"):
        build_dataset("cifar10", "test", data_dir=fake_cifar, verify=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj,match",
    [([1, 2], "top level is list"), ({"data": np.zeros((2, 5), np.uint8), "labels": [0, 1]}, "3072"),
     ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "one per image"),
     ({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}, r"outside \[0, 10\)")],
)
def test_wrong_structure_is_user_error(obj, match):
    with pytest.raises(UserError, match=match):
        cifar.parse_batch(pickle.dumps(obj, protocol=2), "b", md5=None)


def test_garbage_bytes_are_user_error():
    with pytest.raises(UserError, match="rejected"):
        cifar.parse_batch(b"\x80\x02not really a pickle", "b", md5=None)


def make_archive(src_folder, dest, extra=None):
    with tarfile.open(dest, "w:gz") as tar:
        for name in cifar.BATCH_MD5:
            tar.add(src_folder / cifar.BATCH_DIR / name, arcname=f"{cifar.BATCH_DIR}/{name}")
        if extra is not None:
            extra(tar)
    return dest


def test_reads_official_archive_in_memory(fake_cifar, tmp_path, monkeypatch):
    d = tmp_path / "tar"
    d.mkdir()
    archive = make_archive(fake_cifar, d / cifar.ARCHIVE)
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    ds = build_dataset("cifar10", "train", data_dir=d)
    assert len(ds) == 5 * N
    assert sorted(p.name for p in d.iterdir()) == [cifar.ARCHIVE]  # nothing extracted to disk


def test_archive_with_symlink_member_is_rejected(fake_cifar, tmp_path, monkeypatch):
    d = tmp_path / "tar"
    d.mkdir()

    def replace_test_batch_with_link(tar):
        info = tarfile.TarInfo(f"{cifar.BATCH_DIR}/test_batch")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)

    with tarfile.open(d / cifar.ARCHIVE, "w:gz") as tar:
        replace_test_batch_with_link(tar)
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5((d / cifar.ARCHIVE).read_bytes()).hexdigest())
    with pytest.raises(UserError, match="not a regular batch file"):
        build_dataset("cifar10", "test", data_dir=d)


def test_archive_wrong_md5_and_truncated(fake_cifar, tmp_path, monkeypatch):
    d = tmp_path / "tar"
    d.mkdir()
    archive = make_archive(fake_cifar, d / cifar.ARCHIVE)
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz: md5 checksum mismatch"):
        build_dataset("cifar10", "test", data_dir=d)
    archive.write_bytes(archive.read_bytes()[:200])
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(UserError, match="corrupt or truncated archive"):
        build_dataset("cifar10", "test", data_dir=d)


def test_download_archive_from_mirror(fake_cifar, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = make_archive(fake_cifar, mirror / cifar.ARCHIVE)
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(cifar, "ARCHIVE_URLS", (archive.as_uri(),))
    with pytest.raises(UserError, match="download=True"):
        build_dataset("cifar10", "test")
    ds = build_dataset("cifar10", "test", download=True)
    assert len(ds) == N
    assert (tmp_path / "cache" / "cifar10" / cifar.ARCHIVE).is_file()


def test_missing_everything_is_user_error(tmp_path):
    with pytest.raises(UserError, match=r"data_batch_1 not found"):
        build_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("split,n", [("train", 5085), ("test", 1017)])
def test_real_verified_subset(split, n):
    ds = build_dataset("cifar10-subset", split, data_dir=shared_dir("cifar10-subset"))
    assert ds.x.shape == (n, 3, 32, 32) and ds.x.dtype == torch.float32
    assert ds.x.min() == -1 and ds.x.max() == 1
    assert ds.y.min() == 0 and ds.y.max() == 9 and ds.num_classes == 10
    assert ds.class_names[0] == "airplane"


def test_subset_checksum_and_missing(tmp_path):
    with pytest.raises(UserError, match="cifar10_verified_subset.npz not found"):
        build_dataset("cifar10-subset", data_dir=tmp_path)
    np.savez(tmp_path / cifar.SUBSET_FILE, a=np.zeros(3))
    with pytest.raises(UserError, match="sha256 checksum mismatch"):
        build_dataset("cifar10-subset", data_dir=tmp_path)
    with pytest.raises(UserError, match="missing array"):
        build_dataset("cifar10-subset", data_dir=tmp_path, verify=False)


def test_real_subset_matches_sha256():
    from meanflow.data.files import file_digest

    path = shared_dir("cifar10-subset") / cifar.SUBSET_FILE
    assert file_digest(path, "sha256") == cifar.SUBSET_SHA256
    with np.load(path) as z:
        assert "test_batch_images_prefix" in z.files
