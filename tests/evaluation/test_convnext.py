"""ConvNeXt-V2 features for pMF's perceptual loss: the computation against a plain transcription, the two
key layouts, the sha256 check, and the refusal of anything but safetensors (pickles never unpickled).

No pretrained weights exist here: the tests write random weights of a tiny ConvNeXt-V2 in both layouts."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from meanflow.data.pairs import sha256_file
from meanflow.errors import UserError
from meanflow.evaluation import convnext as cx

DEPTHS, DIMS = (1, 2, 1, 1), (8, 16, 24, 32)


def random_state(seed=0):
    torch.manual_seed(seed)
    net = cx.ConvNeXtV2(DEPTHS, DIMS)
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}


def to_hf(state):
    """This module's keys -> the Hugging Face ConvNextV2ForImageClassification layout (plus a classifier)."""
    out = {"classifier.weight": torch.zeros(5, DIMS[-1]), "classifier.bias": torch.zeros(5)}
    for k, v in state.items():
        parts = k.split(".")
        if k.startswith("downsample_layers.0."):
            name = {"0": "patch_embeddings", "1": "layernorm"}[parts[2]]
            out[f"convnextv2.embeddings.{name}.{parts[3]}"] = v
        elif k.startswith("downsample_layers."):
            out[f"convnextv2.encoder.stages.{parts[1]}.downsampling_layer.{parts[2]}.{parts[3]}"] = v
        elif k.startswith("stages."):
            sub = {"norm": "layernorm"}.get(parts[3], parts[3])
            leaf = {"gamma": "weight", "beta": "bias"}.get(parts[4], parts[4]) if sub == "grn" else parts[4]
            out[f"convnextv2.encoder.stages.{parts[1]}.layers.{parts[2]}.{sub}.{leaf}"] = v
        else:
            out[f"convnextv2.layernorm.{parts[1]}"] = v
    return out


def transcription(state, x):
    """The ConvNeXt-V2 forward written out with functional ops (models/convnext.py:17-169)."""
    def ln_cf(x, p):  # layer norm over channels of [B, C, H, W]
        mu = x.mean(1, keepdim=True)
        var = (x - mu).square().mean(1, keepdim=True)
        w, b = state[p + ".weight"][:, None, None], state[p + ".bias"][:, None, None]
        return (x - mu) / torch.sqrt(var + 1e-6) * w + b

    for i, depth in enumerate(DEPTHS):
        if i == 0:
            x = ln_cf(F.conv2d(x, state["downsample_layers.0.0.weight"], state["downsample_layers.0.0.bias"],
                               stride=4), "downsample_layers.0.1")
        else:
            x = F.conv2d(ln_cf(x, f"downsample_layers.{i}.0"), state[f"downsample_layers.{i}.1.weight"],
                         state[f"downsample_layers.{i}.1.bias"], stride=2)
        for j in range(depth):
            p = f"stages.{i}.{j}."
            y = F.conv2d(x, state[p + "dwconv.weight"], state[p + "dwconv.bias"], padding=3,
                         groups=x.shape[1])
            y = ln_cf(y, p + "norm").permute(0, 2, 3, 1)
            y = F.gelu(y @ state[p + "pwconv1.weight"].T + state[p + "pwconv1.bias"])
            gx = y.square().sum(dim=(1, 2), keepdim=True).sqrt()
            nx = gx / (gx.mean(-1, keepdim=True) + 1e-6)
            y = state[p + "grn.gamma"] * (y * nx) + state[p + "grn.beta"] + y
            x = x + (y @ state[p + "pwconv2.weight"].T + state[p + "pwconv2.bias"]).permute(0, 3, 1, 2)
    f = x.mean(dim=(2, 3))
    return F.layer_norm(f, f.shape[1:], state["norm.weight"], state["norm.bias"], 1e-6)


@pytest.fixture(autouse=True)
def _fresh_cache():
    cx.clear_cache()
    yield
    cx.clear_cache()


def test_features_match_the_transcription_in_both_layouts(tmp_path):
    state = random_state()
    own, hf = tmp_path / "own.safetensors", tmp_path / "hf.safetensors"
    save_file(state, str(own))
    save_file(to_hf(state), str(hf))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    ref = transcription(state, x)
    for path in (own, hf):
        loaded = cx.load_state_dict(path, depths=DEPTHS, dims=DIMS)
        assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
        net = cx.get_convnext(path, depths=DEPTHS, dims=DIMS)
        assert not any(p.requires_grad for p in net.parameters()) and not net.training
        x_ = x.clone().requires_grad_(True)
        out = net(x_)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        out.square().sum().backward()
        assert x_.grad.abs().sum() > 0  # gradients reach the images


def test_hugging_face_names_of_convnextv2_base_map_onto_this_module():
    hf = ["convnextv2.embeddings.patch_embeddings.weight", "convnextv2.embeddings.patch_embeddings.bias",
          "convnextv2.embeddings.layernorm.weight", "convnextv2.embeddings.layernorm.bias",
          "convnextv2.layernorm.weight", "convnextv2.layernorm.bias"]
    for i, depth in enumerate(cx.BASE_DEPTHS):
        if i:
            hf += [f"convnextv2.encoder.stages.{i}.downsampling_layer.{m}.{p}"
                   for m in (0, 1) for p in ("weight", "bias")]
        for j in range(depth):
            hf += [f"convnextv2.encoder.stages.{i}.layers.{j}.{m}.{p}" for m in
                   ("dwconv", "layernorm", "pwconv1", "grn", "pwconv2") for p in ("weight", "bias")]
    with torch.device("meta"):
        own = set(cx.ConvNeXtV2().state_dict())
    assert sorted(cx._own_key(k) for k in hf) == sorted(own)
    with torch.device("meta"):
        trunk = sum(p.numel() for p in cx.ConvNeXtV2().parameters())
    assert trunk == 87_692_800  # + a 1000-class head: 88.7M, the 89M of ConvNeXt-V2-B (arXiv 2301.00808)


def test_sha256_is_checked(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(random_state(), str(path))
    digest = sha256_file(path)
    assert cx.get_convnext(path, sha256=digest[:12], depths=DEPTHS, dims=DIMS) is not None
    cx.clear_cache()
    with pytest.raises(UserError, match="sha256") as err:
        cx.get_convnext(path, sha256="0" * 64, depths=DEPTHS, dims=DIMS)
    assert "\n" not in str(err.value) and digest in str(err.value)
    with pytest.raises(UserError, match="hex digits"):
        cx.load_state_dict(path, sha256="not-hex", depths=DEPTHS, dims=DIMS)


class _Bomb:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickles_are_refused_never_unpickled(tmp_path, writer):
    marker, path = tmp_path / "unpickled", tmp_path / "w.pth"
    payload = {"downsample_layers.0.0.weight": _Bomb(str(marker))}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match="not a safetensors file .*never unpickled") as err:
        cx.load_state_dict(path, depths=DEPTHS, dims=DIMS)
    assert "\n" not in str(err.value) and not marker.exists()


def test_wrong_keys_and_shapes_are_one_line_errors(tmp_path):
    state = random_state()
    for name, bad in (("missing", {k: v for k, v in state.items() if k != "norm.bias"}),
                      ("unexpected", {**state, "extra.weight": torch.zeros(1)}),
                      ("shape", {**state, "norm.bias": torch.zeros(3)}),
                      ("finite", {**state, "norm.bias": torch.full((DIMS[-1],), float("nan"))})):
        path = tmp_path / f"{name}.safetensors"
        save_file(bad, str(path))
        with pytest.raises(UserError, match=name) as err:
            cx.load_state_dict(path, depths=DEPTHS, dims=DIMS)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not found"):
        cx.load_state_dict(tmp_path / "absent.safetensors")
