"""The ImageNet-256 path end to end on a toy scale, through the CLI: `encode` an image folder with a tiny
random VAE -> `train` the imagenet-b4 preset (shrunk) on the cache -> `sample` (decoded by the cache's
VAE, chosen or random classes) -> `ref-stats --crop` / an ADM-format reference batch -> `eval` FID."""

import json

import numpy as np
import pytest
import torch
from latent_testkit import TINY_LATENT_RUN, CheapFeatures

pytest.importorskip("diffusers")

from meanflow.cli import evaluate as evaluate_cli  # noqa: E402
from meanflow.cli import main  # noqa: E402
from meanflow.training.checkpoint import Checkpoint, list_checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def run(vae_dir, images, tmp_path_factory):
    root = tmp_path_factory.mktemp("trip")
    torch.set_num_threads(1)
    assert main(["encode", str(images), str(root / "cache"), "--vae", str(vae_dir), "--size", "32", "--flips",
                 "--shard-size", "4", "--no-progress"]) == 0
    assert main(["train", *TINY_LATENT_RUN, "--data-dir", str(root / "cache"),
                 "--out-dir", str(root / "runs")]) == 0
    (folder,) = (root / "runs").iterdir()
    return folder


def test_run_records_latent_data_and_vae(run, vae_dir):
    ckpt = Checkpoint(list_checkpoints(run)[-1])
    assert ckpt.state["is_latent"] and ckpt.state["data_shape"] == [4, 16, 16]
    assert ckpt.state["num_classes"] == 3
    assert ckpt.state["vae"]["name"] == str(vae_dir) and ckpt.state["vae"]["scale"] == 0.18215
    assert ckpt.config["data"]["name"] == "latent_cache" and ckpt.config["method"]["kwargs"]["kappa"] == 0.5


def test_sample_decodes_with_the_runs_vae_and_chosen_classes(run, vae_dir, tmp_path):
    from meanflow.latent.vae import decode_latents, load_vae
    from meanflow.utils.images import to_uint8

    assert main(["sample", str(run), "-n", "5", "--classes", "2,0", "--out", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        images, labels, latents = z["images"], z["labels"], z["latents"]
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8 and labels.tolist() == [2, 0, 2, 0, 2]
    assert latents.shape == (5, 4, 16, 16) and (tmp_path / "s.png").is_file()
    again = to_uint8(decode_latents(load_vae(str(vae_dir)), torch.from_numpy(latents)))
    assert np.abs(again.astype(int) - images.astype(int)).max() <= 1
    assert main(["sample", str(run), "-n", "4", "--classes", "random", "--seed", "7", "--no-decode",
                 "--out", str(tmp_path / "r")]) == 0
    with np.load(tmp_path / "r.npz") as z:
        assert z["samples"].shape == (4, 4, 16, 16) and set(z["labels"].tolist()) <= {0, 1, 2}
        first = z["labels"].tolist()
    assert main(["sample", str(run), "-n", "4", "--classes", "random", "--seed", "7", "--no-decode",
                 "--out", str(tmp_path / "r2")]) == 0
    with np.load(tmp_path / "r2.npz") as z:
        assert z["labels"].tolist() == first


def test_fid_against_a_cropped_folder_and_an_adm_reference_batch(run, images, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_cli, "load_feature_model", lambda args: CheapFeatures())
    assert main(["ref-stats", "--images", str(images), "--crop", "32", "--out", str(tmp_path / "ref.npz"),
                 "--no-progress"]) == 0
    with np.load(tmp_path / "ref.npz") as z:  # ADM's file: arr_0 images, mu, sigma and spatial stats
        np.savez(tmp_path / "VIRTUAL_adm.npz", arr_0=np.zeros((2, 32, 32, 3), np.uint8), mu=z["mu"],
                 sigma=z["sigma"], mu_s=np.zeros(3), sigma_s=np.eye(3))
    fids = []
    for ref in ("ref.npz", "VIRTUAL_adm.npz"):
        out = tmp_path / f"{ref}.json"
        assert main(["eval", "--checkpoint", str(run), "--num-samples", "6", "--ref", str(tmp_path / ref),
                     "--kid-subset-size", "3", "--kid-subsets", "2", "--no-progress", "--out", str(out)]) == 0
        fids.append(json.loads(out.read_text())["fid"])
    assert np.isfinite(fids[0]) and fids[0] == pytest.approx(fids[1])
