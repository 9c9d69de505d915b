"""`load_generator("hf://ORG/NAME[@REVISION]")` and `meanflow sample hf://...`, offline (HF_HUB_OFFLINE=1)
from a local folder laid out as the Hub cache: the export's files only, never the network."""

import sys

import numpy as np
import pytest
import torch
from export_testkit import fake_hub_cache, offline_hub, train_tiny

from meanflow.cli import main
from meanflow.errors import UserError
from meanflow.export.layout import FILES
from meanflow.training.load import load_generator

hub = pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two exports of one tiny run: its first EMA and its raw weights."""
    root = tmp_path_factory.mktemp("hf")
    run = train_tiny(root / "runs")
    for name, ema in (("ema", []), ("raw", ["--ema", "raw"])):
        assert main(["export", str(run), str(root / name), *ema]) == 0
    return root


@pytest.fixture
def cache(exports, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "org/digits", exports / "ema")
    fake_hub_cache(cache, "org/digits", exports / "raw", revision="v1", commit="f" * 40)
    offline_hub(monkeypatch, cache)
    return cache


def _same_weights(a, b):
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_hf_paths_load_offline_from_the_hub_cache(exports, cache):
    _, net, cfg = load_generator("hf://org/digits")
    _, local, _ = load_generator(exports / "ema")
    assert _same_weights(net, local) and cfg.method.name == "meanflow"
    assert net.meanflow_export["weights"]["ema"] == 0.9
    _, raw, _ = load_generator("hf://org/digits@v1")
    _, local_raw, _ = load_generator(exports / "raw")
    assert _same_weights(raw, local_raw) and not _same_weights(raw, local)
    with pytest.raises(UserError, match="holds one set of weights"):
        load_generator("hf://org/digits", ema=0.999)


def test_sample_cli_reads_hf_paths(exports, cache, tmp_path, capsys):
    assert main(["sample", "hf://org/digits", "-n", "5", "--seed", "2", "--out", str(tmp_path / "hub")]) == 0
    argv = ["sample", str(exports / "ema"), "-n", "5", "--seed", "2", "--out", str(tmp_path / "local")]
    assert main(argv) == 0
    hub_images, local = np.load(tmp_path / "hub.npz")["images"], np.load(tmp_path / "local.npz")["images"]
    np.testing.assert_array_equal(hub_images, local)
    capsys.readouterr()
    assert main(["sample", "hf://org/digits", "-n", "2"]) == 2
    assert "give --out" in capsys.readouterr().err


@pytest.mark.parametrize("path, message", [
    ("hf://org/absent", "cannot download hf://org/absent (offline: HF_HUB_OFFLINE is set"),
    ("hf://org/digits@v9", "cannot download hf://org/digits@v9"),
    ("hf://not a name", "is not an hf:// path"),
    ("hf://org/digits@", "is not an hf:// path"),
])
def test_unavailable_or_malformed_hf_paths_are_one_line(cache, tmp_path, capsys, path, message):
    assert main(["sample", path, "-n", "2", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.glob("s.*"))


def test_only_the_export_files_are_requested(exports, monkeypatch):
    seen = {}

    def snapshot_download(repo_id, **kw):
        seen.update(repo_id=repo_id, **kw)
        return str(exports / "ema")

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    load_generator("hf://org/digits@abc")
    assert seen == {"repo_id": "org/digits", "revision": "abc", "allow_patterns": list(FILES)}
    assert all(f.endswith((".json", ".safetensors", ".png", ".md")) for f in FILES)  # no pickles


def test_hf_paths_without_the_extra_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(UserError, match=r"pip install 'meanflow\[hub\]'"):
        load_generator("hf://org/digits")
