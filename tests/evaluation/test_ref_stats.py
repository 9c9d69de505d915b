"""Image sources, quantisation, statistics files and the FID/KID path (with a cheap feature model)."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_datasets import patch_build_dataset
from PIL import Image

from meanflow.errors import UserError
from meanflow.evaluation.fid import extract_features, feature_statistics
from meanflow.evaluation.ref_stats import (
    ImageFolder,
    RefStats,
    as_uint8_nhwc,
    check_compatible,
    compute_ref_stats,
    dataset_images,
    evaluate_images,
    load_images,
    load_stats,
    quantize_uint8,
    save_stats,
)


def cheap_features(x: torch.Tensor) -> torch.Tensor:
    """Stand-in for the network: uint8 [B, 3, H, W] -> [B, 6] (channel means and stds)."""
    f = x.float() / 255
    return torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3))], 1)


def test_quantization_inverts_the_dataset_scaling_exactly():
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    x = torch.from_numpy(u8).float() / 127.5 - 1  # how meanflow.data scales pixels
    back = quantize_uint8(x)
    assert back.dtype == np.uint8 and back.shape == (1, 16, 16, 1)
    np.testing.assert_array_equal(back[..., 0], u8[:, 0])
    # Out of range values are clipped; halfway values round like torch.round.
    q = quantize_uint8(torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 5))
    assert q.ravel().tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds half to even -> 128


def test_quantization_is_the_same_as_for_generated_samples():
    from meanflow.utils.images import to_uint8  # what meanflow.sampling.generate_uint8 uses

    x = torch.randn(3, 3, 7, 5, generator=torch.Generator().manual_seed(0)) * 0.7
    x[0, 0, 0, :3] = torch.tensor([-1.0, 1.0, 0.0])
    np.testing.assert_array_equal(quantize_uint8(x), to_uint8(x))


def test_as_uint8_nhwc_layouts():
    nhwc = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(as_uint8_nhwc(nhwc), nhwc)
    np.testing.assert_array_equal(as_uint8_nhwc(nhwc.transpose(0, 3, 1, 2)), nhwc)
    assert as_uint8_nhwc(nhwc[..., 0]).shape == (2, 5, 6, 1)  # [N, H, W] grayscale
    floats = nhwc.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
    np.testing.assert_array_equal(as_uint8_nhwc(floats), nhwc)
    with pytest.raises(UserError, match=r"\[-1, 1\]"):
        as_uint8_nhwc(floats * 3)
    with pytest.raises(UserError, match="empty"):
        as_uint8_nhwc(np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="channel"):
        as_uint8_nhwc(np.zeros((2, 5, 6, 7), np.uint8))


def test_grayscale_is_repeated_to_three_channels():
    seen = []

    def spy(x):
        seen.append(x)
        return cheap_features(x)

    gray = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    feats = extract_features(gray, spy, batch_size=2, progress=False)
    assert feats.shape == (3, 6) and [t.shape[0] for t in seen] == [2, 1]
    assert all(t.shape[1] == 3 and torch.equal(t[:, 0], t[:, 2]) for t in seen)
    rgb = np.repeat(gray, 3, axis=-1)
    np.testing.assert_allclose(feats, extract_features(rgb, cheap_features, progress=False), rtol=1e-6)


def test_empty_input_is_a_user_error():
    with pytest.raises(UserError, match="empty"):
        extract_features(np.zeros((0, 8, 8, 3), np.uint8), cheap_features, progress=False)


def _save_png(path, array):
    Image.fromarray(array).save(path)


def test_image_folder_and_npz_sources(tmp_path):
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, im in enumerate(imgs):
        _save_png(folder / ("sub" if i == 2 else "") / f"{i}.png", im)
    src = load_images(folder)
    assert isinstance(src, ImageFolder) and len(src) == 3
    np.testing.assert_array_equal(np.sort(src[0:3].reshape(3, -1), 0), np.sort(imgs.reshape(3, -1), 0))
    np.savez(tmp_path / "samples.npz", samples=imgs)
    np.testing.assert_array_equal(load_images(tmp_path / "samples.npz"), imgs)
    np.savez(tmp_path / "two.npz", a=imgs, b=imgs)
    with pytest.raises(UserError, match="no image array"):
        load_images(tmp_path / "two.npz")
    (tmp_path / "junk.npz").write_bytes(b"definitely not numpy")
    with pytest.raises(UserError, match="not an .npz file"):
        load_images(tmp_path / "junk.npz")
    with pytest.raises(UserError, match="not found"):
        load_images(tmp_path / "absent.npz")


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        ImageFolder(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _save_png(mixed / "a.png", np.zeros((8, 8, 3), np.uint8))
    _save_png(mixed / "b.png", np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(UserError, match="one size"):
        ImageFolder(mixed)[0:2]


def test_stats_file_round_trip(tmp_path):
    imgs = np.random.default_rng(3).integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    stats = compute_ref_stats(imgs, cheap_features, batch_size=4, kid_features=5, progress=False, source="t")
    feats = extract_features(imgs, cheap_features, progress=False)
    mu, sigma = feature_statistics(feats)
    np.testing.assert_allclose(stats.mu, mu)
    np.testing.assert_allclose(stats.sigma, sigma)
    assert stats.features.shape == (5, 6) and stats.image_shape == (8, 8, 3)
    save_stats(tmp_path / "s.npz", stats)
    back = load_stats(tmp_path / "s.npz")
    assert back.n == 9 and back.image_shape == (8, 8, 3) and back.source == "t"
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(back.features, stats.features)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as data:  # metadata readable without pickle
        assert "pt_inception-2015-12-05" in str(data["network"]) and "round" in str(data["quantization"])


def test_load_stats_errors(tmp_path):
    np.savez(tmp_path / "imgs.npz", samples=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "imgs.npz")
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(UserError, match="do not fit"):
        load_stats(tmp_path / "bad.npz")
    with pytest.raises(UserError, match="not found"):
        load_stats(tmp_path / "absent.npz")


def test_evaluate_images_against_itself_and_a_shifted_set():
    rng = np.random.default_rng(4)
    imgs = rng.integers(0, 200, (40, 8, 8, 3), dtype=np.uint8)
    ref = compute_ref_stats(imgs, cheap_features, progress=False)
    same = evaluate_images(imgs, ref, cheap_features, progress=False, kid_subsets=5, kid_subset_size=20)
    assert abs(same["fid"]) < 1e-9 and abs(same["kid"]) < 1e-3
    shifted = evaluate_images(imgs + 50, ref, cheap_features, progress=False, kid_subsets=5)
    assert shifted["fid"] > 0.05 and shifted["kid"] > 10 * abs(same["kid"])
    assert shifted["num_samples"] == 40 and shifted["num_reference"] == 40


def test_mismatched_image_sizes_are_refused():
    ref = RefStats(np.zeros(6), np.eye(6), 10, None, (28, 28, 1), "dataset=mnist")
    with pytest.raises(UserError, match="32x32 images .* 28x28"):
        check_compatible(np.zeros((2, 32, 32, 3), np.uint8), ref)
    with pytest.raises(UserError, match="32x32"):
        evaluate_images(np.zeros((2, 32, 32, 3), np.uint8), ref, cheap_features, progress=False)
    check_compatible(np.zeros((2, 28, 28, 3), np.uint8), ref)  # channels may differ: gray is repeated


def test_dataset_images_quantises_like_samples(monkeypatch):
    u8 = np.random.default_rng(5).integers(0, 256, (4, 1, 6, 6), dtype=np.uint8)
    fake, calls = patch_build_dataset(monkeypatch, u8)
    got = dataset_images("mnist", split="test", data_dir="/d")
    assert calls == [("mnist", "test", "/d", False)]
    np.testing.assert_array_equal(got, u8.transpose(0, 2, 3, 1))
    fake.is_latent = True
    with pytest.raises(UserError, match="latents"):
        dataset_images("imagenet-latents")
    fake.is_latent, fake.x = False, torch.zeros(4, 2)
    with pytest.raises(UserError, match="not an image dataset"):
        dataset_images("moons")


def test_stats_and_image_files_never_unpickle(tmp_path):
    marker = tmp_path / "UNPICKLED"

    class Mkdir:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    np.savez(tmp_path / "obj.npz", mu=np.array([Mkdir()], dtype=object), sigma=np.eye(1))
    with pytest.raises(UserError, match="holds Python objects"):
        load_stats(tmp_path / "obj.npz")
    np.savez(tmp_path / "img.npz", images=np.array([Mkdir()], dtype=object))
    with pytest.raises(UserError, match="holds Python objects"):
        load_images(tmp_path / "img.npz")
    assert not marker.exists()


def test_load_stats_file_errors(tmp_path):
    imgs = np.random.default_rng(3).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    save_stats(tmp_path / "s.npz", compute_ref_stats(imgs, cheap_features, progress=False))
    data = (tmp_path / "s.npz").read_bytes()
    (tmp_path / "half.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "dir.npz").mkdir()
    for name, match in (("half.npz", "truncated or corrupt"), ("empty.npz", r"empty \(0 bytes\)"),
                        ("dir.npz", "is a folder"), ("absent.npz", "not found")):
        with pytest.raises(UserError, match=match):
            load_stats(tmp_path / name)


def test_save_stats_is_atomic(tmp_path, monkeypatch):
    stats = RefStats(np.zeros(2), np.eye(2), 3)
    save_stats(tmp_path / "s.npz", stats)
    before = (tmp_path / "s.npz").read_bytes()

    def full(file, **arrays):
        Path(file).write_bytes(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(UserError, match="cannot write statistics to .*s.npz: No space left on device"):
        save_stats(tmp_path / "s.npz", RefStats(np.ones(2), np.eye(2), 5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]
    assert (tmp_path / "s.npz").read_bytes() == before
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        save_stats(tmp_path / "f" / "s.npz", stats)
