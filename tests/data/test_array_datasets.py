import numpy as np
import pytest
import torch

from meanflow.data import build_dataset
from meanflow.errors import UserError


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """The design's quantisation: round((x + 1) * 127.5), NCHW -> NHWC."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("key", ["images", "arr_0"])
@pytest.mark.parametrize("channels", [1, 3])
def test_npz_round_trip(tmp_path, key, channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 7, channels), dtype=np.uint8)
    labels = np.array([0, 3, 1, 1, 2, 0])
    np.savez(tmp_path / "d.npz", **{key: images, "labels": labels})
    ds = build_dataset("npz", data_dir=tmp_path / "d.npz")
    assert ds.x.shape == (6, channels, 5, 7) and ds.x.min() >= -1 and ds.x.max() <= 1
    assert np.array_equal(to_uint8(ds.x), images)
    assert ds.y.tolist() == labels.tolist() and ds.num_classes == 4
    assert build_dataset("npz", path=tmp_path / "d.npz", num_classes=10).num_classes == 10


def test_npz_unlabelled_grayscale_and_split_keys(tmp_path):
    np.savez(tmp_path / "g.npz", images=np.zeros((3, 4, 4), np.uint8))
    ds = build_dataset("npz", path=tmp_path / "g.npz")
    assert ds.x.shape == (3, 1, 4, 4) and ds.y is None and ds.num_classes == 0
    np.savez(tmp_path / "s.npz", train_images=np.zeros((3, 4, 4, 3), np.uint8),
             test_images=np.full((2, 4, 4, 3), 255, np.uint8))
    assert len(build_dataset("npz", "train", path=tmp_path / "s.npz")) == 3
    assert (build_dataset("npz", "test", path=tmp_path / "s.npz").x == 1).all()


@pytest.mark.parametrize(
    "arrays,match",
    [({"images": np.zeros((2, 4, 4, 3), np.float32)}, "must be uint8"),
     ({"pixels": np.zeros((2, 4, 4, 3), np.uint8)}, r"no 'images'.*pixels"),
     ({"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.array([0.5, 1])}, "labels must be integers"),
     ({"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.array([0, 1, 2])},
      "labels must be integers")],
)
def test_npz_bad_contents(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=match):
        build_dataset("npz", path=tmp_path / "bad.npz")


def test_npz_not_a_zip_missing_and_no_path(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk" * 10)
    with pytest.raises(UserError, match=r"junk\.npz: not a readable \.npz"):
        build_dataset("npz", path=tmp_path / "junk.npz")
    np.save(tmp_path / "one.npy", np.zeros(3, np.uint8))
    with pytest.raises(UserError, match="not an .npz archive"):
        build_dataset("npz", path=tmp_path / "one.npy")
    with pytest.raises(UserError, match="nope.npz not found"):
        build_dataset("npz", path=tmp_path / "nope.npz")
    with pytest.raises(UserError, match="path="):
        build_dataset("npz")


def test_npz_with_pickled_object_array_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="obj.npz"):
        build_dataset("npz", path=tmp_path / "obj.npz")


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_latents_round_trip_unscaled(tmp_path, fmt):
    lat = np.random.default_rng(1).standard_normal((5, 4, 32, 32)).astype(np.float32)
    labels = np.array([0, 999, 5, 5, 1], dtype=np.int64)
    path = tmp_path / f"lat.{fmt}"
    if fmt == "npz":
        np.savez(path, latents=lat, labels=labels)
    else:
        from safetensors.numpy import save_file

        save_file({"latents": lat, "labels": labels}, str(path))
    ds = build_dataset("latents", path=path, num_classes=1000)
    assert ds.is_latent and ds.num_classes == 1000 and ds.image_shape == (4, 32, 32)
    assert np.array_equal(ds.x.numpy(), lat)  # no 0.18215 scaling applied
    assert ds.y.tolist() == labels.tolist()


def test_latents_errors(tmp_path):
    np.savez(tmp_path / "nan.npz", latents=np.full((1, 4, 2, 2), np.nan, np.float32))
    with pytest.raises(UserError, match="NaN"):
        build_dataset("latents", path=tmp_path / "nan.npz")
    np.savez(tmp_path / "lab.npz", latents=np.zeros((2, 4, 2, 2), np.float32), labels=np.array([0, 1000]))
    with pytest.raises(UserError, match=r"labels span \[0, 1000\] but num_classes=1000"):
        build_dataset("latents", path=tmp_path / "lab.npz", num_classes=1000)
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(UserError, match=r"bad\.safetensors: not a readable"):
        build_dataset("latents", path=tmp_path / "bad.safetensors")
    np.savez(tmp_path / "u8.npz", latents=np.zeros((2, 4, 2, 2), np.uint8))
    with pytest.raises(UserError, match="must be float"):
        build_dataset("latents", path=tmp_path / "u8.npz")
