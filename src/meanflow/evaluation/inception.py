"""The FID Inception-v3: TensorFlow's "2015-12-05" graph in the PyTorch layout of pytorch-fid.

Every published FID (and the SPEC's protocol) is measured with this exact network, which differs
from torchvision's ImageNet Inception-v3 in three places that change the numbers:

* the average pools inside the A, C and first E blocks exclude the zero padding from the mean
  (``count_include_pad=False``), as TensorFlow's pooling does;
* the last E block (``Mixed_7c``) pools its side branch with a *max* pool, a quirk of the graph;
* there are 1008 classes (the graph's softmax), and no auxiliary head.

Input convention (pytorch-fid's): NCHW images, uint8 in [0, 255] or float in [0, 1], resized to
299 x 299 with bilinear interpolation (``align_corners=False``) and mapped to [-1, 1] by ``2 x - 1``.
The output is the 2048-d ``pool3`` feature (global average of ``Mixed_7c``).

Weights are a plain state dict in the key layout of pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
and are always loaded with ``weights_only=True`` (never unpickled as code).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meanflow.errors import UserError

WEIGHTS_ENV = "MEANFLOW_INCEPTION_WEIGHTS"
CACHE_ENV = "MEANFLOW_CACHE"
WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
FEATURE_DIM = 2048
NUM_CLASSES = 1008
INPUT_SIZE = 299


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, as in the TF graph) -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: Tensor) -> Tensor:
    # TF averages over the valid pixels only; torchvision's default would count the zero padding.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Mixed_5b/c/d: 1x1 | 5x5 | double 3x3 | avg-pool + 1x1 (35 x 35)."""

    def __init__(self, in_ch: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17 (strided 3x3 | strided double 3x3 | max pool)."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class FIDInceptionC(nn.Module):
    """Mixed_6b..e: 1x1 | factorised 7x7 | double factorised 7x7 | avg-pool + 1x1 (17 x 17)."""

    def __init__(self, in_ch: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8 (1x1 + strided 3x3 | 1x7, 7x1, strided 3x3 | max pool)."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b/c: 1x1 | split 3x3 | split double 3x3 | pool + 1x1 (8 x 8).

    ``max_pool=True`` for Mixed_7c: the TF graph pools that block's side branch with a max pool.
    """

    def __init__(self, in_ch: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_ch, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        a = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_3x3(x)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionV3(nn.Module):
    """FID Inception-v3 returning 2048-d pool3 features.

    ``forward(x)``: x [B, 3, H, W], uint8 in [0, 255] or float in [0, 1] -> [B, 2048] float32.
    ``forward_normalized(x)``: x [B, 3, 299, 299] already in [-1, 1] -> [B, 2048].
    ``logits(features)``: [B, 2048] -> [B, 1008] class logits for the Inception Score.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, c7=128)
        self.Mixed_6c = FIDInceptionC(768, c7=160)
        self.Mixed_6d = FIDInceptionC(768, c7=160)
        self.Mixed_6e = FIDInceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.eval()

    @staticmethod
    def preprocess(x: Tensor) -> Tensor:
        """[B, 3, H, W] uint8 [0, 255] or float [0, 1] -> float32 [B, 3, 299, 299] in [-1, 1]."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(x.shape)}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    def forward_normalized(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_normalized(self.preprocess(x))

    @property
    def has_classifier(self) -> bool:
        """False when the fc weights are missing (NaN-filled), as in pool3-only weight files."""
        return bool(torch.isfinite(self.fc.weight).all())

    def logits(self, features: Tensor) -> Tensor:
        """pool3 features [B, 2048] -> logits [B, 1008] as the original Inception Score code computes them.

        The original (OpenAI improved-GAN) code multiplies pool3 by the softmax weight matrix and
        omits the bias, so this does too.
        """
        if not self.has_classifier:
            raise UserError(
                "these Inception weights have no classifier (fc weights are NaN: a pool3-only file); "
                "the Inception Score needs the full pt_inception-2015-12-05 weights"
            )
        return features.float() @ self.fc.weight.t()


# ----------------------------------------------------------------------------------------------------------
# Weights: a path, the environment variable, the cache, or a verified download.


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "meanflow")
    return Path(root) / "inception"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected_prefix(url: str) -> str:
    # torch.hub convention: the file name ends in "-<sha256 prefix>.<ext>".
    match = re.search(r"-([a-f0-9]{6,})\.", os.path.basename(url))
    if match is None:
        raise ValueError(f"no hash prefix in {url}")
    return match.group(1)


def download_weights(url: str = WEIGHTS_URL, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Download ``url`` into the cache (atomically: temp file, hash check, rename) and return its path.

    The sha256 of the file must start with the prefix carried in its name (``...-6726825d.pth``).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / os.path.basename(url)
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    prefix = _expected_prefix(url)
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=".download-", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            from tqdm import tqdm

            with tqdm(total=total or None, unit="B", unit_scale=True, disable=not progress,
                      desc=os.path.basename(url)) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        digest = _sha256(tmp)
        if not digest.startswith(prefix):
            raise UserError(f"downloaded Inception weights fail the hash check (sha256 {digest[:8]}..., "
                            f"expected {prefix}...): {url}")
        os.replace(tmp, target)  # atomic: a concurrent reader sees the old state or the whole file
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(
            f"cannot download the Inception weights ({exc}); pass a local file with --inception-weights "
            f"or set {WEIGHTS_ENV}"
        ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def resolve_weights(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The weights file: ``path``, else ``$MEANFLOW_INCEPTION_WEIGHTS``, else the cached (downloaded) file."""
    chosen = path if path is not None else os.environ.get(WEIGHTS_ENV) or None
    if chosen is not None:
        from meanflow.utils.files import check_input_file

        return check_input_file(Path(chosen).expanduser(), "Inception weights file")
    cached = default_cache_dir() / os.path.basename(WEIGHTS_URL)
    if cached.is_file():
        return cached
    if not download:
        raise UserError(f"no Inception weights: pass --inception-weights PATH or set {WEIGHTS_ENV}")
    return download_weights()


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load and validate an Inception state dict (tensors only, never code: ``weights_only=True``
    refuses any pickled object that is not a tensor or a plain container)."""
    from meanflow.utils.files import check_input_file

    check_input_file(path, "Inception weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, not a torch file ...
        msg = " ".join(str(exc).split()) or type(exc).__name__
        if "weights only load failed" in msg.lower():  # torch's advice to unpickle is not ours
            if "global" in msg.lower():
                msg = "it holds pickled Python objects, not only tensors; refused, never unpickled"
            else:
                msg = "not a torch.save file of tensors"
        raise UserError(f"Inception weights file {path} is not a readable PyTorch weights file "
                        f"({msg[:200]})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    with torch.device("meta"):  # shapes only: no memory, no random init
        reference = InceptionV3().state_dict()
    required = [k for k in reference if not k.startswith("fc.")]
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in reference]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise UserError(f"{path} is not a pt_inception-2015-12-05 state dict: " + ", ".join(parts))
    for k, v in state.items():
        if tuple(v.shape) != tuple(reference[k].shape):
            raise UserError(f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(reference[k].shape)}")
        if k not in ("fc.weight", "fc.bias") and v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(f"{path}: {k} holds non-finite values")
    return state


def load_inception(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   download: bool = True) -> InceptionV3:
    """Build the FID Inception-v3 and load its weights (see :func:`resolve_weights`), in eval mode."""
    state = load_state_dict(resolve_weights(weights, download=download))
    model = InceptionV3()
    state = dict(state)
    for key, shape in (("fc.weight", (NUM_CLASSES, FEATURE_DIM)), ("fc.bias", (NUM_CLASSES,))):
        state.setdefault(key, torch.full(shape, float("nan")))  # pool3-only file: no classifier
    model.load_state_dict(state)
    model = model.to(device).eval().requires_grad_(False)
    if torch.device(device).type == "cpu":
        # oneDNN's convolutions run ~1.5x faster on channels-last weights (measured, one thread); the
        # features change only by float rounding (~1e-5)
        model = model.to(memory_format=torch.channels_last)
    return model
