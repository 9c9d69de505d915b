"""Exports of a latent run (tiny random VAE, tiny class-conditional DiT): the VAE record in config.json,
the VAE stored with `--include-vae` (safetensors) and used by `sample` and the pipeline, the pipeline
decoding exactly as `meanflow sample`, and VAEs that are refused (other fingerprint, pickled weights)."""

import json
import shutil

import numpy as np
import pytest
import torch
from latent_testkit import TINY_LATENT_RUN, tiny_vae_folder

pytest.importorskip("diffusers")

from meanflow.cli import main  # noqa: E402
from meanflow.diffusers import MeanFlowPipeline  # noqa: E402
from meanflow.training.checkpoint import Checkpoint, list_checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def run(vae_dir, images, tmp_path_factory):
    root = tmp_path_factory.mktemp("latent-export")
    assert main(["encode", str(images), str(root / "cache"), "--vae", str(vae_dir), "--size", "32",
                 "--shard-size", "8", "--no-progress"]) == 0
    argv = ["train", *TINY_LATENT_RUN, "--data-dir", str(root / "cache"), "--out-dir", str(root / "runs")]
    assert main(argv) == 0
    (folder,) = (root / "runs").iterdir()
    return folder


def _images(path, out, *args):
    argv = ["sample", str(path), "-n", "4", "--classes", "2,0,1,2", "--seed", "3", *args, "--out", str(out)]
    assert main(argv) == 0
    with np.load(f"{out}.npz") as z:
        return z["images"]


def test_latent_export_records_and_stores_its_vae(run, vae_dir, tmp_path):
    out = tmp_path / "export"
    assert main(["export", str(run), str(out), "--include-vae"]) == 0
    config = json.loads((out / "config.json").read_text())
    recorded = Checkpoint(list_checkpoints(run)[-1]).state["vae"]
    assert config["vae"] == recorded and config["data"]["is_latent"]
    assert config["data"]["shape"] == [4, 16, 16]
    stored = sorted(p.name for p in (out / "vae").iterdir())
    assert stored == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert recorded["fingerprint"] in (out / "README.md").read_text()
    assert config["sampling"]["grid"]["n"] == 6  # 2 x 3 classes, decoded by the VAE
    want = _images(run, tmp_path / "run")
    np.testing.assert_array_equal(_images(out, tmp_path / "exp"), want)  # decoded by out/vae
    pipe = MeanFlowPipeline.from_pretrained(out)
    got = pipe(class_labels=[2, 0, 1, 2], generator=torch.Generator().manual_seed(3), output_type="np").images
    assert got.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(np.round(got * 255).astype(np.uint8), want)
    latents = pipe(class_labels=[2], generator=torch.Generator().manual_seed(3), output_type="latent").images
    assert latents.shape == (1, 4, 16, 16)
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "vae" / "diffusion_pytorch_model.safetensors").is_file()


def test_latent_export_without_the_vae_decodes_with_the_recorded_one(run, tmp_path):
    out = tmp_path / "export"
    assert main(["export", str(run), str(out)]) == 0
    assert not (out / "vae").exists()
    pipe = MeanFlowPipeline.from_pretrained(out)  # the recorded VAE folder
    got = pipe(class_labels=[2, 0, 1, 2], generator=torch.Generator().manual_seed(3), output_type="np").images
    np.testing.assert_array_equal(np.round(got * 255).astype(np.uint8), _images(run, tmp_path / "run"))


def test_other_or_pickled_vaes_are_refused_in_one_line(run, vae_dir, tmp_path, capsys):
    other = tiny_vae_folder(tmp_path / "other", seed=1)
    assert main(["export", str(run), str(tmp_path / "a"), "--vae", str(other)]) == 2
    assert "fingerprint" in capsys.readouterr().err and not (tmp_path / "a").exists()
    pickled = tmp_path / "pickled"
    shutil.copytree(vae_dir, pickled)
    weights = pickled / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), pickled / "diffusion_pytorch_model.bin")
    weights.unlink()
    assert main(["export", str(run), str(tmp_path / "b"), "--vae", str(pickled)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "from safetensors" in err[0] and not (tmp_path / "b").exists()
