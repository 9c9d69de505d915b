"""Checkpoints: atomic writes, keep-last-k, exact round trip, loading without pickle, bad files."""

import pickle

import pytest
import torch
from safetensors.torch import safe_open, save_file
from torch import nn

from meanflow.errors import UserError
from meanflow.training import checkpoint as ck
from meanflow.training.ema import EMA


def _parts(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(2):
        net(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    ema = EMA(net, [0.9, 0.99])
    ema.update(net)
    return net, opt, ema


def _save(run, step, net, opt, ema):
    return ck.save_checkpoint(ck.checkpoint_path(run, step), model=net.state_dict(), ema=ema.shadows,
                              optimizer=opt.state_dict(), config={"preset": "x"},
                              state={"step": step, "sampler": {"epoch": 1, "position": 7}})


def test_round_trip_is_exact(tmp_path):
    net, opt, ema = _parts()
    path = _save(tmp_path, 12, net, opt, ema)
    c = ck.Checkpoint(tmp_path)  # a run folder resolves to its newest checkpoint
    assert c.path == path and c.step == 12 and c.config == {"preset": "x"}
    assert c.state["sampler"] == {"epoch": 1, "position": 7}
    for k, v in net.state_dict().items():
        assert torch.equal(c.model()[k], v)
    for d in (0.9, 0.99):
        for k, v in ema.state(d).items():
            assert torch.equal(c.ema(d)[k], v)
    net2, opt2, _ = _parts(seed=1)
    opt2.load_state_dict(c.optimizer())
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for key, val in a["state"][i].items():
            assert torch.equal(val, b["state"][i][key])
    with pytest.raises(UserError, match="no EMA 0.5"):
        c.ema(0.5)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    net, opt, ema = _parts()
    _save(tmp_path, 1, net, opt, ema)

    def forbidden(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    c = ck.Checkpoint(tmp_path)
    c.model(), c.optimizer(), c.ema(0.9)


def test_keep_last_k(tmp_path):
    net, opt, ema = _parts()
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, net, opt, ema)
        ck.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt-0000004.safetensors",
                                                              "ckpt-0000005.safetensors"]


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    net, opt, ema = _parts()
    good = _save(tmp_path, 1, net, opt, ema)
    before = good.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", crash)
    with pytest.raises(OSError):
        _save(tmp_path, 2, net, opt, ema)
    with pytest.raises(OSError):
        _save(tmp_path, 1, net, opt, ema)  # overwriting an existing checkpoint
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["ckpt-0000001.safetensors"]  # no temp file, no torn step 2
    assert good.read_bytes() == before


@pytest.mark.parametrize("content, message", [
    (b"", "is an empty file"),
    (b"not a safetensors file at all", "is not a safetensors file"),
    (b"\x00" * 64, "is not a safetensors file"),
    (b"PK\x03\x04" + b"\x00" * 60, "zip archive"),
])
def test_corrupt_checkpoint_is_a_user_error(tmp_path, content, message):
    p = tmp_path / "ckpt-0000001.safetensors"
    p.write_bytes(content)
    with pytest.raises(UserError, match=message):
        ck.Checkpoint(p)


def test_truncated_checkpoint(tmp_path):
    path = _save(tmp_path, 3, *_parts())
    data = path.read_bytes()
    for cut in (12, 40, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(UserError, match="is truncated"):
            ck.Checkpoint(path)


def test_foreign_safetensors_file(tmp_path):
    p = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "pt"})
    with pytest.raises(UserError, match="not a meanflow checkpoint"):
        ck.Checkpoint(p)


@pytest.mark.parametrize("drop, message", [
    ("model/", "no model/ tensors"), ("ema/0.9/", "no ema/0.9/ tensors"), ("optim/", "no optim/ tensors")])
def test_crafted_checkpoint_without_a_group(tmp_path, drop, message):
    path = _save(tmp_path, 3, *_parts())
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(drop)}
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(UserError, match=message):
        ck.Checkpoint(path)


def test_load_into_checks_names_and_shapes(tmp_path):
    net, opt, ema = _parts()
    path = _save(tmp_path, 3, net, opt, ema)
    fresh = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    ck.Checkpoint(path).load_into(fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    with pytest.raises(UserError, match=r"model/2.weight has shape \[2, 5\], the network expects \[3, 5\]"):
        ck.Checkpoint(path).load_into(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 3)))
    deeper = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2), nn.Linear(2, 2))
    with pytest.raises(UserError, match=r"does not match its config: missing model/3.bias \(and 1 more\)"):
        ck.Checkpoint(path).load_into(deeper)
    with safe_open(str(path), framework="pt") as f:  # one tensor missing from a crafted file
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "model/0.bias"}
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(UserError, match="missing model/0.bias"):
        ck.Checkpoint(path).load_into(fresh)


def test_remove_stale_temps(tmp_path):
    path = _save(tmp_path, 3, *_parts())
    stale = [tmp_path / "checkpoints" / ".ckpt-0000004.tmp123.safetensors",
             tmp_path / "checkpoints" / ".ckpt-0000005.safetensors.tmp124",  # the naming before
             tmp_path / "checkpoints" / ".tmpnkzWwc",  # safetensors' own temp name
             tmp_path / ".loss.png.tmp99", tmp_path / "samples" / ".step-0000004.png.tmp7",
             tmp_path / ".log.jsonl.tmp5"]
    for p in stale:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x" * 100)
    keep = [tmp_path / "checkpoints" / ".hidden-note", tmp_path / "notes.tmp1"]
    for p in keep:
        p.write_text("mine")
    assert sorted(ck.remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(not p.exists() for p in stale) and all(p.exists() for p in keep)
    assert ck.list_checkpoints(tmp_path) == [path]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ck.Checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match="no checkpoint"):
        ck.Checkpoint(tmp_path)


def test_ema_decays_and_warmup():
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.zero_()
    ema = EMA(net, [0.5, 0.9], warmup=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)
    assert torch.allclose(ema.state(0.5)["weight"], torch.full((2, 2), 0.5))
    assert torch.allclose(ema.state(0.9)["weight"], torch.full((2, 2), 0.1))
    warm = EMA(nn.Linear(2, 2), [0.999], warmup=True)
    warm.update(net)  # first update: decay min(0.999, 2/11)
    target = net.weight.detach()
    assert (warm.state(0.999)["weight"] - target).abs().max() < 0.9
