"""The `pairs` dataset and its writer: layout, reproducibility from (seed, i), resume, corruption."""

import json

import pytest
import safetensors.torch
import torch
from pairs_testkit import SOURCE, tiny_velocity_net, write_tiny_pairs

from meanflow.data import BatchLoader, ImageData, PointData, build_dataset
from meanflow.data.pairs import MANIFEST, load_pairs, shard_name
from meanflow.errors import UserError
from meanflow.reflow_pairs import PairsJob, write_pairs
from meanflow.sampling import noise_for

pytestmark = pytest.mark.usefixtures("one_thread")


def test_round_trip_points(tmp_path):
    m = write_tiny_pairs(tmp_path / "p", n=40, shard_size=16)
    assert m["complete"] and [s["file"] for s in m["shards"]] == [shard_name(k) for k in range(3)]
    assert [(s["start"], s["stop"]) for s in m["shards"]] == [(0, 16), (16, 32), (32, 40)]
    assert m["solver"] == {"name": "heun", "steps": 4} and m["nfe_mean"] == 8.0 and m["nfe_total"] == 5 * 8
    data = build_dataset("pairs", data_dir=tmp_path / "p")
    assert isinstance(data, PointData) and data.y is None and data.num_classes == 0
    assert data.x.shape == data.noise.shape == (40, 2)
    assert torch.equal(data.noise, noise_for(0, 40, (2,), seed=0))
    assert not torch.allclose(data.x, data.noise)


def test_round_trip_images_with_labels(tmp_path):
    write_tiny_pairs(tmp_path / "p", n=10, shard_size=4, shape=(1, 4, 4), num_classes=3)
    data = build_dataset("pairs", path=tmp_path / "p")
    assert isinstance(data, ImageData) and data.x.shape == data.noise.shape == (10, 1, 4, 4)
    assert data.num_classes == 3 and torch.equal(data.y, torch.arange(10) % 3)
    with pytest.raises(UserError, match="unknown split 'test'"):
        build_dataset("pairs", split="test", data_dir=tmp_path / "p")


@pytest.mark.parametrize("solver, atol", [("heun", 1e-6), ("rk45", 1e-4)])
def test_pairs_depend_only_on_seed_and_index(tmp_path, solver, atol):
    net = tiny_velocity_net()
    job = dict(solver=solver, steps=4, net=net)
    ref = _tensors_of(tmp_path / "a", n=30, shard_size=12, batch_size=6, **job)
    # same batch size, other shard sizes (multiples of it) and a shorter run: bit for bit
    for i, (n, shard) in enumerate([(30, 6), (30, 30), (18, 12)]):
        other = _tensors_of(tmp_path / f"b{i}", n=n, shard_size=shard, batch_size=6, **job)
        assert torch.equal(other.noise, ref.noise[:n]) and torch.equal(other.x, ref.x[:n])
    # another batch size: the same noise; the samples agree to the solver's accuracy
    other = _tensors_of(tmp_path / "c", n=30, shard_size=7, batch_size=5, **job)
    assert torch.equal(other.noise, ref.noise)
    torch.testing.assert_close(other.x, ref.x, atol=atol, rtol=0)


def _tensors_of(folder, **kw):
    write_tiny_pairs(folder, **kw)
    return load_pairs(path=folder)


def test_resume_after_a_killed_shard(tmp_path, monkeypatch):
    net = tiny_velocity_net()
    ref = write_tiny_pairs(tmp_path / "ref", n=40, shard_size=8, net=net)
    real_save, calls = safetensors.torch.save_file, []

    def killed_on_third(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            with open(path, "wb") as f:  # half a file, then the process dies
                f.write(b"\x00" * 10)
            raise KeyboardInterrupt
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", killed_on_third)
    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):
        write_tiny_pairs(out, n=40, shard_size=8, net=net)
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    m = json.loads((out / MANIFEST).read_text())
    assert not m["complete"] and len(m["shards"]) == 2
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, shard_name(0), shard_name(1)]  # no temp left
    with pytest.raises(UserError, match=r"unfinished \(2 of 5 shards\).*same `meanflow reflow-pairs`"):
        load_pairs(path=out)
    # what a kill -9 can leave: a temp of a dead process, a shard written but not yet in the manifest
    (out / f".{shard_name(2)[:-12]}.tmp999999999.safetensors").write_bytes(b"junk")
    (out / shard_name(3)).write_bytes(b"junk")
    lines = []
    m = write_pairs(net, out, PairsJob(num_pairs=40, shard_size=8, batch_size=8, solver="heun", steps=4),
                    source=SOURCE, echo=lines.append)
    assert m["complete"] and [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in ref["shards"]]
    assert sum("kept" in line for line in lines[:-1]) == 2 and "3 shard(s) written, 2 kept" in lines[-1]
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, *(shard_name(k) for k in range(5))])
    # a finished folder is verified and left alone
    lines.clear()
    write_pairs(net, out, PairsJob(num_pairs=40, shard_size=8, batch_size=8, solver="heun", steps=4),
                source=SOURCE, echo=lines.append)
    assert "0 shard(s) written, 5 kept" in lines[-1]


def test_a_corrupt_shard_is_refused_by_the_loader_and_rewritten_by_the_writer(tmp_path):
    net = tiny_velocity_net()
    m = write_tiny_pairs(tmp_path / "p", n=20, shard_size=8, net=net)
    path = tmp_path / "p" / shard_name(1)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"pairs-00001.safetensors is corrupt \(its sha256 differs"):
        load_pairs(path=tmp_path / "p")
    lines = []
    again = write_pairs(net, tmp_path / "p", PairsJob(num_pairs=20, shard_size=8, batch_size=8, solver="heun",
                                                      steps=4), source=SOURCE, echo=lines.append)
    assert any("shard 2/3" in line and "computing it again" in line for line in lines)
    assert again["shards"] == m["shards"]
    load_pairs(path=tmp_path / "p")


@pytest.mark.parametrize("change, message", [
    (dict(seed=1), "seed is 0 there but 1 here"),
    (dict(n=30), "num_pairs is 20 there but 30 here"),
    (dict(shard_size=4), "shard_size is 8 there but 4 here"),
    (dict(solver="euler"), "solver is {'name': 'heun', 'steps': 4} there but {'name': 'euler', 'steps': 4}"),
])
def test_another_command_is_refused(tmp_path, change, message):
    write_tiny_pairs(tmp_path / "p", n=20, shard_size=8)
    kw = {"n": 20, "shard_size": 8, **change}
    with pytest.raises(UserError, match="manifest.json was written by another command: " + _re(message)):
        write_tiny_pairs(tmp_path / "p", **kw)


def test_another_source_is_refused(tmp_path):
    write_tiny_pairs(tmp_path / "p", n=8)
    job = PairsJob(num_pairs=8, shard_size=16, batch_size=8, solver="heun", steps=4)
    with pytest.raises(UserError, match="source.step is 0 there but 5 here"):
        write_pairs(tiny_velocity_net(), tmp_path / "p", job, source={**SOURCE, "step": 5})


def _re(text):
    import re

    return re.escape(text)


def test_bad_folders(tmp_path):
    with pytest.raises(UserError, match="give the folder written by `meanflow reflow-pairs`"):
        load_pairs()
    with pytest.raises(UserError, match="is not a folder"):
        load_pairs(path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no manifest.json"):
        load_pairs(path=tmp_path / "empty")
    write_tiny_pairs(tmp_path / "p", n=20, shard_size=8)
    manifest = tmp_path / "p" / MANIFEST
    good = manifest.read_text()
    manifest.write_text(good[:50])
    with pytest.raises(UserError, match="cannot read .*manifest.json"):
        load_pairs(path=tmp_path / "p")
    manifest.write_text(good.replace("meanflow-pairs-v1", "other"))
    with pytest.raises(UserError, match="not a pairs manifest"):
        load_pairs(path=tmp_path / "p")
    manifest.write_text(good)
    (tmp_path / "p" / shard_name(2)).unlink()
    with pytest.raises(UserError, match="pairs-00002.safetensors is missing"):
        load_pairs(path=tmp_path / "p")
    # a shard whose hash is right but whose tensors are not what the manifest says
    m = json.loads(good)
    m["shape"] = [3]
    manifest.write_text(json.dumps(m))
    with pytest.raises(UserError, match=r"pairs-00000.safetensors: noise must be torch.float32 \[8, 3\]"):
        load_pairs(path=tmp_path / "p")


def test_out_folder_must_be_new_empty_or_a_pairs_folder(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="holds files but no manifest.json"):
        write_tiny_pairs(tmp_path / "busy")
    with pytest.raises(UserError, match="must be >= 1"):
        PairsJob(num_pairs=0)
    with pytest.raises(UserError, match="unknown solver"):
        PairsJob(num_pairs=1, solver="rk4")


def test_batch_loader_keeps_noise_aligned_and_resumes(tmp_path):
    x = torch.randn(50, 2)
    data = PointData(x=x, y=None, num_classes=0, name="p", noise=-3 * x)
    loader = BatchLoader(data, 8, seed=3)
    for _ in range(4):
        b = loader.next_batch()
        assert torch.equal(b.noise, -3 * b.x) and b.y is None
    state = loader.state_dict()
    want = [loader.next_batch() for _ in range(5)]
    again = BatchLoader(data, 8, seed=3)
    again.load_state_dict(state)
    for a, b in zip(want, (again.next_batch() for _ in range(5))):
        assert torch.equal(a.x, b.x) and torch.equal(a.noise, b.noise)
    xb, yb = next(BatchLoader(data, 8))  # the plain (x, y) form is unchanged
    assert xb.shape == (8, 2) and yb is None
    assert BatchLoader(PointData(x=x, y=None, num_classes=0, name="q"), 8).next_batch().noise is None


def test_noise_must_match_x():
    with pytest.raises(ValueError, match="noise must be float32"):
        PointData(x=torch.zeros(4, 2), y=None, num_classes=0, name="p", noise=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="noise must be float32"):
        ImageData(x=torch.zeros(4, 1, 2, 2), y=None, num_classes=0, name="p",
                  noise=torch.zeros(4, 1, 2, 2).double())


def test_training_config_reads_the_pairs_once(tmp_path):
    from meanflow.training.build import build_data
    from meanflow.training.presets import resolve_config

    write_tiny_pairs(tmp_path / "p", n=24)
    for extra in ([f"data.data_dir={tmp_path / 'p'}"], [f"data.options={{path: {tmp_path / 'p'}}}"]):
        cfg = resolve_config("toy-2d", overrides=["method.name=reflow", "data.name=pairs", *extra])
        assert cfg.data.split == "all"
        data = build_data(cfg)
        assert len(data) == 24 and data.noise.shape == (24, 2)
