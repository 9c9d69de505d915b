"""Bad inputs of the latent path: each is one line `meanflow: error: ...`, exit status 2, no traceback."""

import shutil
import sys

import pytest
from latent_testkit import TINY_LATENT_RUN, image_folder, tiny_vae_folder

pytest.importorskip("diffusers")

from meanflow.cli import main  # noqa: E402
from meanflow.latent.cache import shard_file  # noqa: E402


def _fails(capsys, argv, *expected):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("meanflow: error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]


def _encode(src, out, vae, *extra):
    return [str(a) for a in ("encode", src, out, "--vae", vae, "--size", "32", "--shard-size", "4",
                             "--no-progress", *extra)]


@pytest.fixture(scope="module")
def setup(vae_dir, images, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    assert main(_encode(images, root / "cache", vae_dir)) == 0
    assert main(["train", *TINY_LATENT_RUN, "--data-dir", str(root / "cache"),
                 "--out-dir", str(root / "runs")]) == 0
    (run,) = (root / "runs").iterdir()
    other = tiny_vae_folder(root / "other", seed=1)
    assert main(_encode(images, root / "cache2", other)) == 0
    return root, run, other


def test_bad_image_folders(capsys, vae_dir, tmp_path):
    src = image_folder(tmp_path / "a", per_class=1)
    (src / "dog" / "000.png").write_bytes(b"not a png")
    _fails(capsys, _encode(src, tmp_path / "o1", vae_dir), "dog/000.png", "cannot read image")
    shutil.rmtree(src / "dog")
    (src / "dog").mkdir()
    _fails(capsys, _encode(src, tmp_path / "o2", vae_dir), "class folder", "dog holds no images")
    flat = tmp_path / "flat"
    flat.mkdir()
    _fails(capsys, _encode(flat, tmp_path / "o3", vae_dir), "no class folders")
    _fails(capsys, _encode(tmp_path / "missing", tmp_path / "o4", vae_dir), "is not a folder")
    good = image_folder(tmp_path / "b", per_class=1)
    _fails(capsys, _encode(good, tmp_path / "o5", tmp_path / "no-vae"), "no such folder")


def test_missing_diffusers_is_one_line(capsys, monkeypatch, images, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    _fails(capsys, _encode(images, tmp_path / "o", "x/y"), "needs diffusers",
           "pip install 'meanflow[latent]'")


def test_resuming_a_cache_with_another_vae(capsys, setup, images):
    root, _, other = setup
    _fails(capsys, _encode(images, root / "cache", other), "was encoded with VAE", "use that VAE")


def test_training_on_a_bad_cache(capsys, setup, tmp_path):
    root, run, _ = setup
    shutil.copytree(root / "cache", tmp_path / "torn")
    shard_file(tmp_path / "torn", 1, "done").unlink()
    train = ["train", *TINY_LATENT_RUN, "--out-dir", tmp_path / "runs", "--data-dir"]
    _fails(capsys, [*train, tmp_path / "torn"], "incomplete: 1 of 3 shards missing", "meanflow encode")
    _fails(capsys, [*train, tmp_path], "not a latent cache")
    # resuming a run on latents of another VAE
    _fails(capsys, [*train, root / "cache2", "--resume", run], "trained on latents of VAE",
           "this cache is from")


def test_sampling_with_another_vae_or_bad_classes(capsys, setup, tmp_path):
    _, run, other = setup
    _fails(capsys, ["sample", run, "-n", "2", "--vae", other, "--out", tmp_path / "s"],
           "made with VAE", "use the same VAE")
    _fails(capsys, ["sample", run, "-n", "2", "--classes", "1,x", "--out", tmp_path / "s"],
           "--classes must be")
    _fails(capsys, ["sample", run, "-n", "2", "--classes", "5", "--out", tmp_path / "s"],
           "class 5 is outside [0, 2]")
    assert not list(tmp_path.iterdir())
