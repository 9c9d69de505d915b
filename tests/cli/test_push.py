"""`meanflow push` with a mocked `HfApi` (never the network): what is uploaded (a run is exported first, an
export is copied with its card naming the repo), the uploaded folder loading back through `hf://` from a
local Hub cache, and the failures (no credentials, offline, no network, no extra, bad names): one
line, exit 2, no upload."""

import json
import sys
from pathlib import Path

import pytest
import torch
from export_testkit import fake_hub_cache, offline_hub, train_tiny

from meanflow.cli import main
from meanflow.export.layout import FILES as EXPORT_FILES
from meanflow.training.load import load_generator

hub = pytest.importorskip("huggingface_hub")
import huggingface_hub.constants  # noqa: E402

FILES = ["README.md", "config.json", "model.safetensors", "samples.png"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def api(monkeypatch, no_token, tmp_path):
    """A logged-in user and a mocked HfApi: records create_repo / upload_folder and the uploaded files."""
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["create"] = (repo_id, kw)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls["upload"] = (repo_id, kw)
        fake_hub_cache(tmp_path / "hub-cache", repo_id, folder_path)  # what the Hub would then serve
        calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    return calls


def _one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meanflow: error: ") and "Traceback" not in err, err
    return lines[0]


def test_push_a_run_exports_it_uploads_only_the_export_and_loads_back(run, api, tmp_path, capsys,
                                                                      monkeypatch):
    assert main(["push", str(run), "--repo", "org/tiny-digits", "--private", "--ema", "0.999"]) == 0
    out = capsys.readouterr().out
    assert "https://huggingface.co/org/tiny-digits" in out and "hf://org/tiny-digits" in out
    assert api["create"] == ("org/tiny-digits", {"repo_type": "model", "private": True, "exist_ok": True})
    repo, kw = api["upload"]
    assert repo == "org/tiny-digits" and kw["allow_patterns"] == list(EXPORT_FILES)  # the export's files only
    assert api["files"] == FILES
    offline_hub(monkeypatch, tmp_path / "hub-cache")
    snap = next((tmp_path / "hub-cache").glob("models--org--tiny-digits/snapshots/*"))
    assert 'load_generator("hf://org/tiny-digits")' in (snap / "README.md").read_text()
    _, net, _ = load_generator("hf://org/tiny-digits")
    _, ref, _ = load_generator(run, ema=0.999)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in ref.state_dict().items())


def test_push_an_export_copies_it_and_names_the_repo_in_the_card(run, api, tmp_path, capsys):
    export = tmp_path / "export"
    assert main(["export", str(run), str(export)]) == 0
    (export / "samples").mkdir()
    (export / "samples" / "extra.npz").write_bytes(b"not uploaded")
    assert main(["push", str(export), "--repo", "me/digits", "--message", "first"]) == 0
    assert api["files"] == FILES and api["upload"][1]["commit_message"] == "first"
    assert api["create"][1]["private"] is False
    snap = next((tmp_path / "hub-cache").glob("models--me--digits/snapshots/*"))
    assert json.loads((snap / "config.json").read_text()) == json.loads((export / "config.json").read_text())
    assert "hf://me/digits" in (snap / "README.md").read_text()
    assert "hf://me/digits" not in (export / "README.md").read_text()  # the local export is left as it was
    line = _one_line_error(capsys, main(["push", str(export), "--repo", "me/digits", "--ema", "raw"]))
    assert "--ema" in line


def test_push_without_credentials_is_one_line(run, no_token, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("the Hub was called")

    monkeypatch.setattr(hub.HfApi, "create_repo", never)
    monkeypatch.setattr(hub.HfApi, "upload_folder", never)
    line = _one_line_error(capsys, main(["push", str(run), "--repo", "org/x"]))
    assert "no Hugging Face credentials" in line and "HF_TOKEN" in line
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE" in _one_line_error(capsys, main(["push", str(run), "--repo", "org/x"]))


def test_push_network_failure_and_bad_names_are_one_line(run, api, tmp_path, capsys, monkeypatch):
    def unreachable(self, repo_id, **kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'\n(more lines)")

    monkeypatch.setattr(hub.HfApi, "create_repo", unreachable)
    line = _one_line_error(capsys, main(["push", str(run), "--repo", "org/x"]))
    assert line == "meanflow: error: cannot push to org/x: Failed to resolve 'huggingface.co'"
    assert "not a Hub repository name" in _one_line_error(capsys, main(["push", str(run), "--repo", "a/b/c"]))
    assert "not found" in _one_line_error(capsys, main(["push", str(tmp_path / "none"), "--repo", "org/x"]))
    line = _one_line_error(capsys, main(["push", str(run), "--repo", "org/x", "--ema", "0.5"]))
    assert "no EMA 0.5" in line


def test_push_without_the_extra_says_how_to_install_it(run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    line = _one_line_error(capsys, main(["push", str(run), "--repo", "org/x"]))
    assert "pip install 'meanflow[hub]'" in line
