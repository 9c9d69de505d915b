"""`meanflow encode` after a failure (issue 24): a run that fails before its first shard leaves no
manifest to block the documented re-run; a VAE folder holding only a pickled `.bin` is refused in one
line (`use_safetensors=True`), without diffusers' "unsafe serialization" lines."""

import json

import pytest
from bad_input_testkit import fails_cleanly
from latent_testkit import image_folder

pytest.importorskip("diffusers")

from meanflow.cli import main  # noqa: E402


def _encode(src, out, vae, *extra):
    return [str(a) for a in ("encode", src, out, "--vae", vae, "--size", "32", "--shard-size", "4",
                             "--no-progress", *extra)]


def test_fix_the_input_and_run_again(vae_dir, tmp_path, capsys):
    src = image_folder(tmp_path / "imgs", per_class=2)
    bad = src / "dog" / "zzz.png"
    bad.write_bytes(b"not a png")
    one_shard = ("--shard-size", "64")  # the bad image fails the first shard
    argv = _encode(src, tmp_path / "cache", vae_dir, *one_shard)
    fails_cleanly(capsys, argv, "cannot read image", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing left to block the re-run
    (tmp_path / "empty").mkdir()  # a folder that existed before keeps existing, empty
    argv = _encode(src, tmp_path / "empty", vae_dir, *one_shard)
    fails_cleanly(capsys, argv, "cannot read image", tmp_path / "empty")
    bad.unlink()
    assert main(_encode(src, tmp_path / "cache", vae_dir)) == 0
    assert "latent cache complete: 6 images" in capsys.readouterr().out


def test_a_manifest_without_encoded_shards_is_replaced(vae_dir, images, tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(_encode(images, out, vae_dir, "--flips")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    # as a job killed before its first shard leaves it: the manifest, no shard
    for p in sorted((out / "shards").iterdir()):
        p.unlink()
    assert main(_encode(images, out, vae_dir)) == 0  # other options: the empty cache is started afresh
    assert json.loads((out / "manifest.json").read_text())["flips"] == 1 != manifest["flips"]
    fails_cleanly(capsys, _encode(images, out, vae_dir, "--flips"), "was made with other options", out)


def test_pickled_vae_is_refused_in_one_line(vae_dir, images, tmp_path, capsys):
    import logging

    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(vae_dir))
    vae.save_pretrained(str(tmp_path / "bin"), safe_serialization=False)
    assert sorted(p.name for p in (tmp_path / "bin").iterdir())[1] == "diffusion_pytorch_model.bin"
    records = []
    handler = logging.Handler()
    handler.emit = records.append  # what diffusers would print ("An error occurred ...", "unsafe ...")
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        line = fails_cleanly(capsys, _encode(images, tmp_path / "cache", tmp_path / "bin"),
                             "cannot load the VAE", tmp_path)
    finally:
        logger.removeHandler(handler)
    assert "from safetensors" in line and "diffusion_pytorch_model.safetensors" in line
    assert [r.getMessage() for r in records] == []
