"""File-system and file-format failures of `sample`, `eval` and `ref-stats`: each one is a single line
`meanflow: error: ...` with exit code 2, no traceback, and no output or temp file left behind."""

import errno
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import torch
from cli_testkit import TINY, CheapFeatures
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from meanflow.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A real checkpoint of a tiny digits run (trained once for the module)."""
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", "--out-dir", str(runs), *TINY]) == 0
    (path,) = runs.glob("*/checkpoints/ckpt-*.safetensors")
    return path


class Touch:
    """Unpickling this object creates the folder `marker`: proof that a file was (wrongly) unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*"))


def _fails(capsys, argv, *expected, after=None):
    """Run the CLI, expect exit 2 with one line `meanflow: error: ...` containing every `expected`
    (with `after`: the line names that path, and the texts come after it)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("meanflow: error: "), err
    assert "Traceback" not in err
    rest = lines[0]
    if after is not None:
        assert str(after) in rest, rest
        rest = rest.split(str(after), 1)[1]
    for text in expected:
        assert str(text) in rest, lines[0]
    return lines[0]


def _images(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 200, (n, size, size, 3), dtype=np.uint8)


def _no_space(file, *args, **kwargs):
    """np.savez on a full disk: half a file, then ENOSPC."""
    pathlib.Path(file).write_bytes(b"PK\x03\x04 partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _read_only(src, dst, *args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))


# ------------------------------------------------------------------------------------------------------
# sample --out


def test_sample_out_under_a_file(ckpt, tmp_path, capsys):
    (tmp_path / "f").write_text("a file")
    _fails(capsys, ["sample", ckpt, "-n", "4", "--out", tmp_path / "f" / "x"],
           f"--out {tmp_path / 'f' / 'x'}: {tmp_path / 'f'} is a file, not a folder")
    _fails(capsys, ["sample", ckpt, "-n", "4", "--out", tmp_path / "f" / "deeper" / "x.npz"],
           f"{tmp_path / 'f'} is a file, not a folder")
    (tmp_path / "d.npz").mkdir()
    _fails(capsys, ["sample", ckpt, "-n", "4", "--out", tmp_path / "d"], "is a folder; give a file name")
    assert _files(tmp_path) == ["d.npz", "f"]


def test_sample_out_read_only_file_system(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "replace", _read_only)
    _fails(capsys, ["sample", ckpt, "-n", "4", "--out", tmp_path / "s"],
           f"cannot write samples to {tmp_path / 's.npz'}: Read-only file system")
    assert _files(tmp_path) == []


def test_sample_out_disk_full(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(np, "savez", _no_space)
    _fails(capsys, ["sample", ckpt, "-n", "4", "--out", tmp_path / "s"],
           f"cannot write samples to {tmp_path / 's.npz'}: No space left on device")
    assert _files(tmp_path) == []


def test_sample_png_failure_leaves_the_previous_npz_whole(ckpt, tmp_path, capsys, monkeypatch):
    assert main(["sample", str(ckpt), "-n", "4", "--out", str(tmp_path / "s")]) == 0
    before = (tmp_path / "s.npz").read_bytes()
    (tmp_path / "s.png").unlink()

    def no_space(self, fp, *args, **kwargs):
        pathlib.Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", no_space)
    _fails(capsys, ["sample", ckpt, "-n", "6", "--seed", "1", "--out", tmp_path / "s"],
           f"cannot write samples to {tmp_path / 's.png'}: No space left on device")
    assert _files(tmp_path) == ["s.npz"] and (tmp_path / "s.npz").read_bytes() == before


def test_sample_crash_or_interrupt_leaves_nothing(ckpt, tmp_path, capsys, monkeypatch):
    import meanflow.sampling

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(meanflow.sampling, "generate", crash)
        with pytest.raises(RuntimeError, match="boom"):
            main(["sample", str(ckpt), "-n", "4", "--out", str(tmp_path / "a" / "s")])
    assert _files(tmp_path) == []  # not even the folder

    def interrupted(file, *args, **kwargs):
        pathlib.Path(file).write_bytes(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    assert main(["sample", str(ckpt), "-n", "4", "--out", str(tmp_path / "s")]) == 130
    assert _files(tmp_path) == []


# ------------------------------------------------------------------------------------------------------
# checkpoints given to sample


def _rewrite(src, dst, keep=lambda name: True, change=None, meta=None):
    """Copy a checkpoint keeping the tensors `keep` accepts, `change`d, with metadata edited by `meta`."""
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    if change is not None:
        tensors = {k: change(k, v) for k, v in tensors.items()}
    if meta is not None:
        metadata = meta(metadata)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_checkpoint_not_safetensors(ckpt, tmp_path, capsys):
    for name, content in (("random.safetensors", np.random.default_rng(0).bytes(4096)),
                          ("text.safetensors", b"this is a text file\n" * 20)):
        bad = tmp_path / name
        bad.write_bytes(content)
        _fails(capsys, ["sample", bad, "--out", tmp_path / "s"], "not a safetensors", after=bad)
    assert _files(tmp_path) == ["random.safetensors", "text.safetensors"]


def test_checkpoint_empty(tmp_path, capsys):
    bad = tmp_path / "ckpt-0000001.safetensors"
    bad.write_bytes(b"")
    _fails(capsys, ["sample", bad, "--out", tmp_path / "s"], "empty", after=bad)
    assert _files(tmp_path) == [bad.name]


def test_checkpoint_folder_or_missing(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    _fails(capsys, ["sample", tmp_path / "run"], "no checkpoint in run folder", after=None)
    (tmp_path / "f").write_text("a file")
    _fails(capsys, ["sample", tmp_path / "f" / "ckpt.safetensors", "--out", tmp_path / "s"], "not found")
    assert _files(tmp_path) == ["f", "run"]


def _half(ckpt, tmp_path):
    data = ckpt.read_bytes()
    bad = tmp_path / "half.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    return bad


def test_checkpoint_truncated(ckpt, tmp_path, capsys):
    bad = _half(ckpt, tmp_path)
    _fails(capsys, ["sample", bad, "--out", tmp_path / "s"], after=bad)
    assert _files(tmp_path) == [bad.name]


def test_checkpoint_truncated_says_truncated(ckpt, tmp_path, capsys):
    bad = _half(ckpt, tmp_path)
    _fails(capsys, ["sample", bad, "--out", tmp_path / "s"], "truncated", after=bad)


def test_checkpoint_missing_tensors(ckpt, tmp_path, capsys):
    no_model = _rewrite(ckpt, tmp_path / "no_model.safetensors", keep=lambda k: not k.startswith("model/"))
    _fails(capsys, ["sample", no_model, "--ema", "raw", "--out", tmp_path / "s"], "model/", after=no_model)
    no_ema = _rewrite(ckpt, tmp_path / "no_ema.safetensors", keep=lambda k: not k.startswith("ema/"))
    _fails(capsys, ["sample", no_ema, "--out", tmp_path / "s"], "ema/0.999/", after=no_ema)
    one_less = _rewrite(ckpt, tmp_path / "one_less.safetensors", keep=lambda k: k != "ema/0.999/out.bias")
    _fails(capsys, ["sample", one_less, "--out", tmp_path / "s"],
           f"checkpoint {one_less} does not match its config: missing ema/0.999/out.bias")
    assert _files(tmp_path) == ["no_ema.safetensors", "no_model.safetensors", "one_less.safetensors"]


def test_checkpoint_wrong_shapes(ckpt, tmp_path, capsys):
    def bigger(meta):
        config = json.loads(meta["config"])
        config["network"]["kwargs"]["hidden"] = 24
        return {**meta, "config": json.dumps(config)}

    bad = _rewrite(ckpt, tmp_path / "wide.safetensors", meta=bigger)
    _fails(capsys, ["sample", bad, "--out", tmp_path / "s"], f"checkpoint {bad} does not match its config",
           "has shape", "the network expects")
    assert _files(tmp_path) == ["wide.safetensors"]


def test_checkpoint_with_non_finite_weights(ckpt, tmp_path, capsys):
    """Not black images with exit 0: a checkpoint holding NaN weights (an old diverged run, a crafted
    file; training itself never writes one) is refused."""
    def poison(name, v):
        return torch.full_like(v, float("nan")) if name == "ema/0.999/out.weight" else v

    bad = _rewrite(ckpt, tmp_path / "nan.safetensors", change=poison)
    _fails(capsys, ["sample", bad, "--out", tmp_path / "s"], "holds non-finite weights (out.weight)",
           "cannot produce samples", after=bad)
    assert _files(tmp_path) == ["nan.safetensors"]
    assert main(["sample", str(bad), "--ema", "raw", "--out", str(tmp_path / "s"), "-n", "4"]) == 0


# ------------------------------------------------------------------------------------------------------
# eval --out / ref-stats --out


@pytest.fixture
def real(tmp_path):
    """tmp_path/in/real.npz (images) and tmp_path/in/ref.npz (their statistics, cheap features)."""
    from meanflow.evaluation.ref_stats import compute_ref_stats, save_stats

    folder = tmp_path / "in"
    folder.mkdir()
    images = _images(8)
    np.savez(folder / "real.npz", images=images)
    save_stats(folder / "ref.npz", compute_ref_stats(images, CheapFeatures(), progress=False))
    return folder


def _eval(real, *extra):
    return ["eval", "--samples", real / "real.npz", "--ref", real / "ref.npz", "--kid-subset-size", "4",
            "--no-progress", *extra]


def _ref_stats(real, *extra):
    return ["ref-stats", "--images", real / "real.npz", "--no-progress", *extra]


def test_outputs_under_a_file(real, tmp_path, cheap_model, capsys):
    (tmp_path / "f").write_text("a file")
    out = tmp_path / "f" / "x.json"
    _fails(capsys, _eval(real, "--out", out), f"--out {out}: {tmp_path / 'f'} is a file, not a folder")
    out = tmp_path / "f" / "x.npz"
    _fails(capsys, _ref_stats(real, "--out", out), f"--out {out}: {tmp_path / 'f'} is a file, not a folder")
    _fails(capsys, _ref_stats(real, "--out", real), f"--out {real} is a folder; give a file name")
    _fails(capsys, _eval(real, "--out", real), f"--out {real} is a folder; give a file name")
    assert _files(tmp_path) == ["f", "in", "in/real.npz", "in/ref.npz"]


def test_outputs_read_only(real, tmp_path, cheap_model, capsys, monkeypatch):
    monkeypatch.setattr(os, "replace", _read_only)
    _fails(capsys, _eval(real, "--out", tmp_path / "o" / "e.json"),
           f"cannot write evaluation results to {tmp_path / 'o' / 'e.json'}: Read-only file system")
    _fails(capsys, _ref_stats(real, "--out", tmp_path / "o" / "r.npz"),
           f"cannot write statistics to {tmp_path / 'o' / 'r.npz'}: Read-only file system")
    assert _files(tmp_path / "o") == []


def test_outputs_disk_full(real, tmp_path, cheap_model, capsys, monkeypatch):
    monkeypatch.setattr(np, "savez", _no_space)
    _fails(capsys, _ref_stats(real, "--out", tmp_path / "r.npz"),
           f"cannot write statistics to {tmp_path / 'r.npz'}: No space left on device")

    def no_space(self, *args, **kwargs):
        self.write_bytes(b'{"fid": ')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pathlib.Path, "write_text", no_space)
    _fails(capsys, _eval(real), f"cannot write evaluation results to {real / 'real_eval.json'}: "
                                "No space left on device")
    assert _files(tmp_path) == ["in", "in/real.npz", "in/ref.npz"]


def test_eval_checkpoint_generated_samples_disk_full(real, tmp_path, cheap_model, capsys, monkeypatch):
    import meanflow.sampling as sampling
    import meanflow.training.load as load

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from meanflow.methods import MeanFlow

    monkeypatch.setattr(load, "load_generator", lambda path, ema=None, device="cpu": (MeanFlow(), "n", "c"))
    monkeypatch.setattr(sampling, "generate_uint8", lambda method, net, n, **kw: _images(n))
    monkeypatch.setattr(np, "savez", _no_space)
    path = run_dir / "samples_n8_steps1_seed0.npz"
    _fails(capsys, ["eval", "--checkpoint", run_dir, "--num-samples", "8", "--ref", real / "ref.npz",
                    "--kid-subset-size", "4", "--no-progress"],
           f"cannot write generated samples to {path}: No space left on device")
    assert _files(run_dir) == []


def test_eval_crash_leaves_no_json(real, cheap_model, monkeypatch):
    import meanflow.evaluation.ref_stats as ref_stats

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ref_stats, "evaluate_images", crash)
    with pytest.raises(RuntimeError, match="boom"):
        main([str(a) for a in _eval(real)])
    assert _files(real) == ["real.npz", "ref.npz"]


# ------------------------------------------------------------------------------------------------------
# --samples / --ref / --images files


def _bad_files(folder, marker):
    """name -> (path, text the message must contain) for every kind of unreadable image/stats file."""
    folder.mkdir()
    good = folder / "good.npz"
    np.savez(good, images=_images(6))
    made = {}

    def put(name, content, expect):
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content(path)
        made[name] = (path, expect)

    put("empty.npz", b"", "is empty (0 bytes)")
    put("random.npz", np.random.default_rng(0).bytes(2000), "is not an .npz file (no zip header)")
    put("text.npz", b"mu,sigma\n1,2\n", "is not an .npz file (no zip header)")
    put("truncated.npz", good.read_bytes()[: good.stat().st_size // 2], "is truncated or corrupt")
    put("objects.npz", lambda p: np.savez(p, images=np.array([Touch(marker)], dtype=object)),
        "holds Python objects (pickled data); refused")
    put("objects.npy", lambda p: np.save(p, np.array([Touch(marker)], dtype=object)),
        "holds Python objects (pickled data); refused")
    put("keys.npz", lambda p: np.savez(p, a=_images(3), b=_images(3)), "found a, b")
    put("dtype.npz", lambda p: np.savez(p, images=_images(3).astype(np.int64)), "dtype int64")
    put("shape.npz", lambda p: np.savez(p, images=np.zeros((4, 5), np.uint8)), "shape (4, 5)")
    put("nothing.npz", lambda p: np.savez(p), "holds no arrays")
    put("dir.npz", lambda p: p.mkdir(), "no images")
    made["missing.npz"] = (folder / "missing.npz", "not found")
    good.unlink()
    return made


@pytest.mark.parametrize("flag", ["--samples", "--ref", "--images"])
def test_unreadable_input_files(real, tmp_path, cheap_model, capsys, flag):
    marker = tmp_path / "UNPICKLED"
    bad = _bad_files(tmp_path / "bad", marker)
    out = tmp_path / "out"
    for name, (path, expect) in bad.items():
        if flag == "--samples":
            argv = ["eval", "--samples", path, "--ref", real / "ref.npz", "--out", out / "e.json"]
        elif flag == "--ref":
            argv = ["eval", "--samples", real / "real.npz", "--ref", path, "--out", out / "e.json"]
        else:
            argv = ["ref-stats", "--images", path, "--out", out / "r.npz"]
        _fails(capsys, [*argv, "--no-progress"], expect, after=None if name == "dir.npz" else path)
    assert not marker.exists(), "a file was unpickled"
    assert not out.exists()
    assert _files(real) == ["real.npz", "ref.npz"]


def test_bad_statistics_files(real, tmp_path, cheap_model, capsys):
    ok = dict(mu=np.zeros(6), sigma=np.eye(6))
    cases = {
        "str_mu.npz": (dict(mu=np.array(["a"] * 6), sigma=np.eye(6)), "'mu' has dtype <U1, expected real"),
        "mismatch.npz": (dict(mu=np.zeros(6), sigma=np.eye(5)), "mu (6,) and sigma (5, 5) do not fit"),
        "nan.npz": (dict(mu=np.full(6, np.nan), sigma=np.eye(6)), "non-finite"),
        "n.npz": (dict(ok, n=np.arange(3)), "'n' must be one number"),
        "feats.npz": (dict(ok, features=np.zeros((4, 5), np.float32)), "features (4, 5) do not fit mu (6,)"),
        "only_mu.npz": (dict(mu=np.zeros(6)), "has no 'mu' and 'sigma' arrays (found mu)"),
        "neither.npz": (dict(a=np.zeros(3), b=np.zeros(3)), "holds neither statistics (mu, sigma) nor an"),
    }
    for name, (arrays, expect) in cases.items():
        np.savez(tmp_path / name, **arrays)
        _fails(capsys, _eval(real, "--ref", tmp_path / name, "--out", tmp_path / "e.json"), expect,
               after=tmp_path / name)
    assert not (tmp_path / "e.json").exists()


# ------------------------------------------------------------------------------------------------------
# --inception-weights


def test_unreadable_inception_weights(real, tmp_path, capsys):
    marker = tmp_path / "UNPICKLED"
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(1000))
    (tmp_path / "text.pth").write_text("not weights\n")
    (tmp_path / "folder.pth").mkdir()
    torch.save({"w": Touch(marker)}, tmp_path / "code.pth")
    cases = {
        "missing.pth": "Inception weights file {} not found",
        "empty.pth": "Inception weights file {} is empty (0 bytes)",
        "folder.pth": "Inception weights file {} is a folder, not a file",
        "random.pth": "Inception weights file {} is not a readable PyTorch weights file (not a torch.save",
        "text.pth": "Inception weights file {} is not a readable PyTorch weights file (not a torch.save",
        "code.pth": "Inception weights file {} is not a readable PyTorch weights file (it holds pickled "
                    "Python objects, not only tensors; refused, never unpickled)",
    }
    for name, expect in cases.items():
        _fails(capsys, _ref_stats(real, "--out", tmp_path / "r.npz", "--inception-weights", tmp_path / name),
               expect.format(tmp_path / name))
        _fails(capsys, _eval(real, "--out", tmp_path / "e.json", "--inception-weights", tmp_path / name),
               expect.format(tmp_path / name))
    assert not marker.exists(), "the weights file was unpickled"
    assert not (tmp_path / "r.npz").exists() and not (tmp_path / "e.json").exists()
    shutil.rmtree(tmp_path / "folder.pth")
