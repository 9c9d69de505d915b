import pytest
import torch

from meanflow.data import DATASETS, ImageData, PointData, build_dataset, list_datasets
from meanflow.data.points import TEST_SEED_OFFSET, TOY2D_NAMES
from meanflow.errors import UserError


def test_listing_has_every_family():
    names = list_datasets()
    for name in ("digits", "mnist", "fashion-mnist", "cifar10", "cifar10-subset", "image-folder", "npz",
                 "latents", *TOY2D_NAMES):
        assert name in names and DATASETS[name].description
    assert names == sorted(names)


def test_unknown_name_suggests_close_match():
    with pytest.raises(UserError, match=r"unknown dataset 'minst' \(did you mean 'mnist'\?\); choose from"):
        build_dataset("minst")


def test_unknown_split_and_option():
    with pytest.raises(UserError, match="unknown split 'val'"):
        build_dataset("digits", "val")
    with pytest.raises(UserError, match=r"unknown option\(s\) resolution; options: pad_to"):
        build_dataset("digits", resolution=32)


@pytest.mark.parametrize("split,n", [("train", 1500), ("test", 297)])
def test_digits(split, n):
    ds = build_dataset("digits", split)
    assert isinstance(ds, ImageData) and ds.x.shape == (n, 1, 8, 8) and ds.num_classes == 10
    assert ds.x.min() == -1 and ds.x.max() == 1 and set(ds.y.tolist()) == set(range(10))
    padded = build_dataset("digits", split, pad_to=16)
    assert padded.x.shape == (n, 1, 16, 16) and torch.equal(padded.x[:, :, 4:12, 4:12], ds.x)


def test_toy2d_names_match_the_sampler_module():
    from meanflow.data import toy2d
    assert tuple(toy2d.NAMES) == TOY2D_NAMES


@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_toy2d_point_datasets(name):
    from meanflow.data import toy2d
    train = build_dataset(name, n=256, seed=4)
    assert isinstance(train, PointData) and train.x.shape == (256, 2) and train.x.dtype == torch.float32
    assert train.y is None and train.num_classes == 0 and train.dim == 2
    assert torch.equal(train.x, build_dataset(name, n=256, seed=4).x)
    test = build_dataset(name, "test", n=256, seed=4)
    assert not torch.equal(train.x, test.x)
    assert torch.equal(test.x, toy2d.sample(name, 256, 4 + TEST_SEED_OFFSET).float())


def test_toy2d_rejects_nonpositive_n():
    with pytest.raises(UserError, match="n must be a positive"):
        build_dataset("moons", n=0)


def test_image_data_validates_labels():
    with pytest.raises(UserError, match="labels span"):
        ImageData(x=torch.zeros(2, 1, 4, 4), y=torch.tensor([0, 3]), num_classes=3, name="t")
    with pytest.raises(ValueError, match="float32"):
        ImageData(x=torch.zeros(2, 4, 4), y=None, num_classes=0, name="t")
