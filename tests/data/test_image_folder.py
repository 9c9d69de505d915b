import numpy as np
import pytest
import torch
from PIL import Image

from meanflow.data import build_dataset
from meanflow.data.image_folder import center_crop_resize
from meanflow.errors import UserError


def save(path, size, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    save(root / "cat" / "a.png", (40, 30), (255, 0, 0))
    save(root / "cat" / "b.jpg", (64, 64), (0, 255, 0))
    save(root / "ant" / "c.png", (17, 50), (0, 0, 255))
    Image.new("L", (33, 20), 128).save(root / "ant" / "gray.png")
    (root / "ant" / "notes.txt").write_text("ignored")
    return root


def test_labels_from_sorted_subfolders_and_shapes(folder):
    ds = build_dataset("image-folder", data_dir=folder, resolution=16)
    assert ds.x.shape == (4, 3, 16, 16) and ds.x.dtype == torch.float32
    assert ds.x.min() >= -1 and ds.x.max() <= 1
    assert ds.class_names == ("ant", "cat") and ds.num_classes == 2
    assert ds.y.tolist() == [0, 0, 1, 1]
    # ant/c.png is pure blue, cat/a.png pure red: colours survive crop + resize.
    assert torch.allclose(ds.x[0].mean((1, 2)), torch.tensor([-1.0, -1.0, 1.0]), atol=0.02)
    assert torch.allclose(ds.x[2].mean((1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=0.02)
    # grayscale becomes RGB with equal channels
    assert torch.equal(ds.x[1][0], ds.x[1][1])


def test_center_crop_keeps_centre():
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, 10:20] = 255  # a white centre square in a black 30-wide image
    out = center_crop_resize(Image.fromarray(arr), 10)
    assert out.shape == (10, 10, 3) and out.min() == 255


def test_flat_folder_is_unlabelled(tmp_path):
    save(tmp_path / "x.png", (8, 8), (1, 2, 3))
    save(tmp_path / "y.png", (9, 12), (4, 5, 6))
    ds = build_dataset("image-folder", data_dir=tmp_path, resolution=4)
    assert ds.y is None and ds.num_classes == 0 and ds.x.shape == (2, 3, 4, 4)


def test_split_subfolders(tmp_path):
    save(tmp_path / "train" / "a" / "1.png", (8, 8), (0, 0, 0))
    save(tmp_path / "test" / "a" / "2.png", (8, 8), (0, 0, 0))
    save(tmp_path / "test" / "b" / "3.png", (8, 8), (0, 0, 0))
    assert len(build_dataset("image-folder", "train", data_dir=tmp_path, resolution=8)) == 1
    assert len(build_dataset("image-folder", "test", data_dir=tmp_path, resolution=8)) == 2


def test_corrupt_image_names_file(folder):
    (folder / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match=r"broken\.png: cannot read image"):
        build_dataset("image-folder", data_dir=folder)


@pytest.mark.parametrize("make,match", [(lambda p: None, "no images"), (lambda p: p.rmdir(), "not a folder")])
def test_empty_or_missing_folder(tmp_path, make, match):
    d = tmp_path / "empty"
    d.mkdir()
    make(d)
    with pytest.raises(UserError, match=match):
        build_dataset("image-folder", data_dir=d)


def test_requires_data_dir_and_test_folder(folder):
    with pytest.raises(UserError, match="data_dir"):
        build_dataset("image-folder")
    with pytest.raises(UserError, match="split 'test' needs a folder"):
        build_dataset("image-folder", "test", data_dir=folder)
