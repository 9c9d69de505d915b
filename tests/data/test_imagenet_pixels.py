"""`imagenet_pixels`: class folders read as drawn, ADM-cropped, flipped on request; bad input is one line."""

import numpy as np
import pytest
import torch
from PIL import Image

from meanflow.data import build_dataset
from meanflow.data.adm_crop import adm_center_crop
from meanflow.errors import UserError


def _save(path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def tree(tmp_path):
    """An ImageNet-style root: train/<synset>/<image>, images of several sizes and one non-image."""
    root = tmp_path / "imagenet"
    _save(root / "train" / "n02" / "b.png", (40, 30), 1)
    _save(root / "train" / "n02" / "a.png", (17, 50), 2)
    _save(root / "train" / "n01" / "c.png", (64, 64), 3)
    (root / "train" / "n01" / "notes.txt").write_text("ignored")
    (root / "val").mkdir()
    return root


def _want(path, r):
    with Image.open(path) as img:
        return torch.from_numpy(adm_center_crop(img, r).transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1


def test_labels_order_and_pixels(tree):
    ds = build_dataset("imagenet_pixels", data_dir=tree, resolution=16)
    assert ds.x.shape == (3, 3, 16, 16) and len(ds) == 3 and not ds.is_latent
    assert ds.class_names == ("n01", "n02") and ds.num_classes == 2 and ds.y.tolist() == [0, 1, 1]
    x = ds.x[torch.tensor([2, 0, 1])]
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
    files = [tree / "train" / name for name in ("n02/b.png", "n01/c.png", "n02/a.png")]
    for row, path in zip(x, files):  # exactly the latent path's crop, u8 / 127.5 - 1
        assert torch.equal(row, _want(path, 16))
    # the train folder itself works as data_dir, and threads change nothing
    same = build_dataset("imagenet_pixels", data_dir=tree / "train", resolution=16, workers=0)
    assert torch.equal(same.x[torch.arange(3)], ds.x[torch.arange(3)])


def test_flip_is_seeded_and_mirrors(tree):
    ds = build_dataset("imagenet_pixels", data_dir=tree, resolution=8, flip=True)
    plain = build_dataset("imagenet_pixels", data_dir=tree, resolution=8).x[torch.zeros(64, dtype=torch.long)]
    torch.manual_seed(0)
    a = ds.x[torch.zeros(64, dtype=torch.long)]
    torch.manual_seed(0)
    assert torch.equal(a, ds.x[torch.zeros(64, dtype=torch.long)])  # the loop reseeds: exact on resume
    mirrored = torch.tensor([torch.equal(r, plain[0].flip(-1)) for r in a])
    kept = torch.tensor([torch.equal(r, plain[0]) for r in a])
    assert bool((mirrored | kept).all()) and 16 < int(mirrored.sum()) < 48


def test_trains_a_few_steps(tree, tmp_path):
    from meanflow.training import loop
    from meanflow.training.checkpoint import Checkpoint
    from meanflow.training.presets import resolve_config

    cfg = resolve_config("digits", overrides=[
        "data.name=imagenet_pixels", f"data.data_dir={tree}", "data.options={resolution: 8, flip: true}",
        "data.use_labels=true", "network.kwargs={hidden: 16, depth: 2}", "training.batch_size=2",
        "training.steps=2", "training.warmup_steps=0", f"logging.out_dir={tmp_path / 'runs'}",
        "logging.progress=false", "logging.tensorboard=false", "logging.sample_count=4"])
    run = loop.train(cfg, echo=lambda s: None)
    ckpt = Checkpoint(run)
    assert ckpt.step == 2 and ckpt.state["data_shape"] == [3, 8, 8] and ckpt.state["num_classes"] == 2


def test_corrupt_image_is_one_line_when_drawn(tree):
    (tree / "train" / "n01" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = build_dataset("imagenet_pixels", data_dir=tree, resolution=8)
    with pytest.raises(UserError, match=r"imagenet_pixels: cannot read image .*broken\.png") as e:
        ds.x[torch.arange(len(ds))]
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("make, kw, match", [
    (lambda root: None, {}, "data folder .* does not exist"),
    (lambda root: _save(root / "x.png", (8, 8), 0), {}, "has no class folders"),
    (lambda root: (root / "a").mkdir(parents=True), {}, r"no images \(.png.*\) in the 1 class folders"),
    (lambda root: _save(root / "a" / "x.png", (8, 8), 0), {"resolution": 0}, "resolution must be a positive"),
    (lambda root: _save(root / "a" / "x.png", (8, 8), 0), {"flip": "yes"}, "flip must be true or false"),
    (lambda root: _save(root / "a" / "x.png", (8, 8), 0), {"workers": -1}, "workers must be an integer"),
    (lambda root: [_save(root / c / "x.png", (8, 8), 0) for c in "ab"], {"num_classes": 1},
     "num_classes must be an integer >= the 2 class folders"),
])
def test_bad_input_is_one_line(tmp_path, make, kw, match):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(UserError, match=match) as e:
        build_dataset("imagenet_pixels", data_dir=root, **kw)
    assert "\n" not in str(e.value)


def test_needs_data_dir_and_known_options():
    with pytest.raises(UserError, match="set data.data_dir"):
        build_dataset("imagenet_pixels")
    with pytest.raises(UserError, match="unknown option"):
        build_dataset("imagenet_pixels", data_dir=".", pad_to=4)
