"""`latent.encode` / `latent.cache`: the cache holds the VAE posterior of the ADM crop of every image
(and of its flip), resumes after the last complete shard, splits over ranks, refuses another VAE."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from meanflow.data.adm_crop import adm_center_crop  # noqa: E402
from meanflow.errors import UserError  # noqa: E402
from meanflow.latent.cache import open_cache, shard_file  # noqa: E402
from meanflow.latent.encode import encode_folder, list_class_folder, read_image  # noqa: E402
from meanflow.latent.vae import encode_posterior, load_vae  # noqa: E402

OPTS = dict(size=32, flips=2, shard_size=4, batch_size=3)


@pytest.fixture(scope="module")
def cache(vae_dir, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    encode_folder(images, out, vae=str(vae_dir), echo=lambda s: None, **OPTS)
    return out


def test_cache_holds_the_posterior_of_each_crop_and_its_flip(cache, vae_dir, images):
    m, means, stds, labels = open_cache(cache)
    files, y, classes = list_class_folder(images)
    assert (m.count, m.num_shards, m.flips, m.latent_shape, m.dtype) == (9, 3, 2, (4, 16, 16), "float16")
    assert m.classes == classes == ("cat", "dog", "fox") and labels.tolist() == y.tolist()
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["vae"]["scale"] == 0.18215 and manifest["crop_size"] == 32
    vae = load_vae(str(vae_dir))
    img = read_image(files[5], 32)
    mean, std = encode_posterior(vae, np.stack([img, img[:, ::-1]]))
    got_m, got_s = means[1][1].astype(np.float32), stds[1][1].astype(np.float32)  # image 5 = shard 1, row 1
    np.testing.assert_allclose(got_m, mean.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(got_s, std.numpy(), rtol=2e-3, atol=1e-5)


def test_resume_redoes_only_incomplete_shards(cache, vae_dir, images):
    before = np.load(shard_file(cache, 1, "mean")).copy()
    shard_file(cache, 1, "done").unlink()
    for kind in ("mean", "std"):
        shard_file(cache, 1, kind).write_bytes(b"torn")
    with pytest.raises(UserError, match="incomplete: 1 of 3 shards missing"):
        open_cache(cache)
    _, done = encode_folder(images, cache, vae=str(vae_dir), echo=lambda s: None, **OPTS)
    assert done == 1
    np.testing.assert_allclose(np.load(shard_file(cache, 1, "mean")), before, rtol=1e-3, atol=1e-4)


def test_ranks_share_the_shards(vae_dir, images, cache, tmp_path):
    out = tmp_path / "c"
    for rank in (1, 0):  # each rank encodes shards k % 2 == rank; together the whole cache
        _, done = encode_folder(images, out, vae=str(vae_dir), rank=rank, world_size=2, echo=lambda s: None,
                                **OPTS)
        assert done == (1 if rank else 2)
    for k in range(3):
        np.testing.assert_allclose(np.load(shard_file(out, k, "std")), np.load(shard_file(cache, k, "std")),
                                   rtol=1e-3, atol=1e-6)


def test_another_vae_or_other_options_are_refused(cache, vae_dir, images, tmp_path):
    from latent_testkit import tiny_vae_folder

    other = tiny_vae_folder(tmp_path / "other", seed=1)
    with pytest.raises(UserError, match="encoded with VAE .* not .*other"):
        encode_folder(images, cache, vae=str(other), echo=lambda s: None, **OPTS)
    with pytest.raises(UserError, match="other options .*flips is 2 there, 1 now"):
        encode_folder(images, cache, vae=str(vae_dir), echo=lambda s: None, **{**OPTS, "flips": 1})


def test_dataset_draws_scaled_posterior_samples(cache):
    from meanflow.data import build_dataset

    d = build_dataset("latent_cache", data_dir=str(cache))
    assert (len(d), d.x.shape, d.num_classes, d.is_latent) == (9, (9, 4, 16, 16), 3, True)
    idx = torch.tensor([0, 4, 8])
    torch.manual_seed(3)
    a = d.x[idx]
    torch.manual_seed(3)
    flip = torch.randint(2, (3,))
    mean, std = d.x.posterior(idx, flip)
    torch.testing.assert_close(a, 0.18215 * (mean + std * torch.randn(mean.shape)))
    torch.manual_seed(4)
    assert not torch.equal(d.x[idx], a)  # a fresh latent at every draw


def test_adm_crop_box_then_bicubic_then_centre():
    from PIL import Image

    arr = np.zeros((300, 1100, 3), np.uint8)
    arr[:, 550:] = 255
    out = adm_center_crop(Image.fromarray(arr), 64)  # 1100x300 -> box 550x150 -> 275x75 -> 235x64
    assert out.shape == (64, 64, 3) and out[:, 0].max() == 0 and out[:, -1].min() == 255
    ref = Image.fromarray(arr).resize((550, 150), Image.BOX).resize((275, 75), Image.BOX)
    ref = np.asarray(ref.resize((235, 64), Image.BICUBIC))[:, 85:149]
    np.testing.assert_array_equal(out, ref)
    small = adm_center_crop(Image.fromarray(arr[:20, :30]), 64)  # smaller than the crop: upscaled
    assert small.shape == (64, 64, 3)
