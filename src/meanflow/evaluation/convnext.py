"""ConvNeXt-V2 (Woo et al. 2023) pooled features, written here; weights from a local file the user supplies.

pMF's second perceptual loss (:mod:`meanflow.methods.pmf_perceptual`) compares the pooled, pre-head
features of ConvNeXt-V2-B (``facebook/convnextv2-base-22k-224``) of two images: ``||f(a) - f(b)||^2``.
Architecture (confirmed in the official pMF code, ``Lyy-iiis/pMF@75f6073`` ``models/convnext.py``):

* stem: ``4 x 4`` stride-4 convolution, LayerNorm (``l.115-128``); before stages 2-4 a LayerNorm then a
  ``2 x 2`` stride-2 convolution (``l.130-146``); all LayerNorms eps ``1e-6`` over channels;
* block (``l.51-93``): ``7 x 7`` depthwise convolution, LayerNorm, ``Linear(C, 4C)``, exact GELU, GRN,
  ``Linear(4C, C)``, residual. GRN: ``G = ||x||_2`` over ``(H, W)`` per channel, ``N = G / (mean_C G +
  1e-6)``, ``y = gamma (x N) + beta + x`` (the pMF JAX port puts a ``1e-6`` inside the square root,
  ``l.46-47``; the original and Hugging Face modules, whose weights are loaded, do not: here neither);
* features (``l.160-169``): global average pool, then a final LayerNorm; the classifier is not used;
* Base: depths ``(3, 3, 27, 3)``, widths ``(128, 256, 512, 1024)`` (``l.172``).

The images go in as they are (pMF feeds its ``[-1, 1]`` images with no ImageNet normalisation,
``utils/auxloss_util.py:109-120``), after a paired random resized crop to 224 (done by the caller).

Weights: ONE ``.safetensors`` file (anything else, a pickle above all, is refused and never
unpickled), with the keys of either

* the Hugging Face ``ConvNextV2ForImageClassification`` / ``ConvNextV2Model`` state dict
  (``convnextv2.embeddings.patch_embeddings.*``, ``convnextv2.embeddings.layernorm.*``,
  ``convnextv2.encoder.stages.{i}.downsampling_layer.{0,1}.*``, ``convnextv2.encoder.stages.{i}.layers.{j}.
  {dwconv,layernorm,pwconv1,grn,pwconv2}.*``, ``convnextv2.layernorm.*``; the renaming is that of
  ``models/convnext.py:190-203``), e.g. the ``model.safetensors`` of ``facebook/convnextv2-base-22k-224``;
* or the original ``facebookresearch/ConvNeXt-V2`` module (``downsample_layers.*``, ``stages.{i}.{j}.*``,
  ``norm.*``), which is also this module's own layout.

Classifier keys (``classifier.*``, ``head.*``) are ignored. With ``sha256`` the file's digest is checked
first (:mod:`meanflow.evaluation.digest`). Loaded modules are cached per (file, device).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meanflow.errors import UserError

BASE_DEPTHS = (3, 3, 27, 3)
BASE_DIMS = (128, 256, 512, 1024)
EPS = 1e-6


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channels of ``[B, C, H, W]`` (weight and bias ``[C]``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, EPS)
        return y.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global response normalisation of ``[B, H, W, C]``: ``gamma (x N) + beta + x`` (module docstring)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        g = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        return self.gamma * (x * (g / (g.mean(dim=-1, keepdim=True) + EPS))) + self.beta + x


class Block(nn.Module):
    """ConvNeXt-V2 block ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """ConvNeXt-V2 trunk: ``forward(x [B, 3, H, W]) -> [B, dims[-1]]`` pooled, normalised features."""

    def __init__(self, depths: tuple[int, ...] = BASE_DEPTHS, dims: tuple[int, ...] = BASE_DIMS):
        super().__init__()
        self.depths, self.dims = tuple(depths), tuple(dims)
        stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), ChannelsFirstLayerNorm(dims[0]))
        self.downsample_layers = nn.ModuleList([stem] + [
            nn.Sequential(ChannelsFirstLayerNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
            for i in range(1, len(dims))])
        self.stages = nn.ModuleList(nn.Sequential(*(Block(d) for _ in range(n)))
                                    for n, d in zip(depths, dims))
        self.norm = nn.LayerNorm(dims[-1], eps=EPS)

    def forward(self, x: Tensor) -> Tensor:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.mean(dim=(2, 3)))


_HF_RULES = (  # Hugging Face key -> this module's (original) key, applied in order
    (r"^convnextv2\.embeddings\.patch_embeddings\.", "downsample_layers.0.0."),
    (r"^convnextv2\.embeddings\.layernorm\.", "downsample_layers.0.1."),
    (r"^convnextv2\.encoder\.stages\.(\d+)\.downsampling_layer\.(\d+)\.", r"downsample_layers.\1.\2."),
    (r"^convnextv2\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.", r"stages.\1.\2.norm."),
    (r"^convnextv2\.encoder\.stages\.(\d+)\.layers\.(\d+)\.grn\.weight$", r"stages.\1.\2.grn.gamma"),
    (r"^convnextv2\.encoder\.stages\.(\d+)\.layers\.(\d+)\.grn\.bias$", r"stages.\1.\2.grn.beta"),
    (r"^convnextv2\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stages.\1.\2."),
    (r"^convnextv2\.layernorm\.", "norm."),
)
_IGNORED = re.compile(r"^(classifier|head|convnextv2\.pooler|pooler)\.")


def _own_key(key: str) -> str:
    for pattern, repl in _HF_RULES:
        new = re.sub(pattern, repl, key)
        if new != key:
            return new
    return key


def _read_safetensors(path: Path, what: str) -> dict[str, Tensor]:
    """The tensors of a safetensors file; a one-line UserError for anything else (never unpickled)."""
    from meanflow.utils.files import file_head

    head = file_head(path, what, 9)
    if len(head) < 9 or head[8:9] != b"{":  # safetensors: u64 header length, then a JSON object
        kind = "a pickle or torch.save file" if head[:1] == b"\x80" or head[:2] == b"PK" else "unknown format"
        raise UserError(f"{what} {path} is not a safetensors file ({kind}); only .safetensors is read, "
                        "pickles are refused and never unpickled")
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        why = " ".join(str(exc).split())[:200]
        raise UserError(f"{what} {path} is not a readable safetensors file ({why})") from exc


def load_state_dict(path: str | os.PathLike, sha256: str | None = None, *,
                    depths: tuple[int, ...] = BASE_DEPTHS,
                    dims: tuple[int, ...] = BASE_DIMS) -> dict[str, Tensor]:
    """Read, check (sha256 when given, keys, shapes, finite floats) and rename a ConvNeXt-V2 weights file.

    Returns:
        This module's state dict (float32), without classifier keys.
    """
    from meanflow.evaluation.digest import check_sha256
    from meanflow.utils.files import check_input_file

    what = "ConvNeXt-V2 weights file"
    path = check_input_file(Path(path).expanduser(), what)
    check_sha256(path, sha256, what)
    state = {_own_key(k): v for k, v in _read_safetensors(path, what).items() if not _IGNORED.match(k)}
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ConvNeXtV2(depths, dims).state_dict().items()}
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    if missing or unexpected:
        parts = [f"{len(missing)} missing keys (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})"] if unexpected else []
        raise UserError(f"{what} {path} is not a ConvNeXt-V2 (depths {depths}, widths {dims}) state dict in "
                        "the Hugging Face or original layout: " + ", ".join(parts))
    out = {}
    for k, shape in shapes.items():
        v = state[k]
        if tuple(v.shape) != shape:
            raise UserError(f"{what} {path}: {k} has shape {tuple(v.shape)}, expected {shape}")
        if not v.is_floating_point() or not bool(torch.isfinite(v).all()):
            raise UserError(f"{what} {path}: {k} must hold finite floating-point values")
        out[k] = v.float()
    return out


_CACHE: dict[tuple, ConvNeXtV2] = {}


def get_convnext(path: str | os.PathLike, device: str | torch.device = "cpu", sha256: str | None = None, *,
                 depths: tuple[int, ...] = BASE_DEPTHS, dims: tuple[int, ...] = BASE_DIMS) -> ConvNeXtV2:
    """The frozen ConvNeXt-V2 of a weights file on ``device`` (eval mode, no parameter gradients; inputs
    still get gradients), loaded and checked on first use, then cached per (file, device, digest)."""
    device = torch.device(device)
    key = (str(Path(path).expanduser().resolve()), str(device), sha256, tuple(depths), tuple(dims))
    model = _CACHE.get(key)
    if model is None:
        state = load_state_dict(path, sha256, depths=depths, dims=dims)
        with torch.device("meta"):
            model = ConvNeXtV2(depths, dims)
        model.load_state_dict(state, assign=True)
        model = model.to(device).eval().requires_grad_(False)
        _CACHE[key] = model
    return model


def clear_cache() -> None:
    """Forget every loaded module (tests; or after replacing a weights file)."""
    _CACHE.clear()
