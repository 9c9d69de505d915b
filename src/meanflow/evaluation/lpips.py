"""LPIPS (Zhang et al. 2018), VGG16 variant with the "lin" v0.1 weights, written here; weights from the user.

The consistency-model papers' best CT/CD metric. For images ``x0, x1`` in [-1, 1], ``[B, 3, H, W]``:

    d(x0, x1) = sum_l mean_{h,w} sum_c w_{l,c} (u0_{l,chw} - u1_{l,chw})^2,   u = phi / (||phi||_c + 1e-10)

with ``phi_l`` the VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of the scaled
input ``(x - shift) / scale``, ``||.||_c`` the norm over channels at each pixel, and ``w_l >= 0`` the 1x1
"lin" layers (no bias). ``shift = (-0.030, -0.088, -0.188)`` and ``scale = (0.458, 0.448, 0.450)`` are
ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) rewritten for [-1, 1] inputs
(``2 mean - 1``, ``2 std``); they, eps and the layer taps are those of richzhang/PerceptualSimilarity
(``lpips/lpips.py``, ``lpips/pretrained_networks.py``). Grey images are repeated to 3 channels. The
network runs in float32; it is frozen, but gradients flow to the inputs (the consistency loss
backpropagates through it).

Resizing: the CM CIFAR-10 code (JAX, openai/consistency_models_cifar10) resizes both images to
224 x 224 bilinearly before LPIPS, as :func:`lpips_distance` does by default (``resize=224``,
half-pixel centres, i.e. ``align_corners=False``); ``resize=None`` keeps the native size (at least
16 x 16: VGG16 halves it four times). The CM PyTorch code (openai/consistency_models,
``cm/karras_diffusion.py``) resizes only images smaller than 256 and uses piq's LPIPS with the max pools
replaced by average pools; the network here is the official one, with max pools.

Weights: no pretrained weights ship with the project. :func:`load_state_dict` reads ONE file, a
``.safetensors`` file or a ``torch.save`` file (read with ``weights_only=True``; pickled objects are
refused, never unpickled), holding the state dict of the official ``lpips.LPIPS(net="vgg")`` module:

* ``net.slice{k}.{i}.weight`` / ``.bias`` for the 13 convolutions (torchvision's ``vgg16().features``
  indices ``i`` kept, split into the official slices): ``net.slice1.0``, ``net.slice1.2``,
  ``net.slice2.5``, ``net.slice2.7``, ``net.slice3.10``, ``net.slice3.12``, ``net.slice3.14``,
  ``net.slice4.17``, ``net.slice4.19``, ``net.slice4.21``, ``net.slice5.24``, ``net.slice5.26``,
  ``net.slice5.28``; weights ``[out, in, 3, 3]``, biases ``[out]``;
* ``lin{l}.model.1.weight``, l = 0..4, shapes ``[1, C_l, 1, 1]`` with C = 64, 128, 256, 512, 512
  (non-negative, as the official training clamps them);
* optionally ``scaling_layer.shift`` / ``scaling_layer.scale`` ``[1, 3, 1, 1]``, checked against the
  constants above.

Making the file, in an environment that has torchvision and the official ``lpips/weights/v0.1/vgg.pth``
(torchvision's ImageNet VGG16 is the trunk the official package loads):

    import torch, torchvision; from safetensors.torch import save_file
    feats = torchvision.models.vgg16(weights="IMAGENET1K_V1").features.state_dict()  # "0.weight" ...
    part = lambda i: 1 + sum(i >= b for b in (4, 9, 16, 23))                     # official slices
    state = {f"net.slice{part(int(k.split('.')[0]))}.{k}": v for k, v in feats.items()}
    state.update(torch.load("vgg.pth", weights_only=True))                        # lin0..lin4.model.1.weight
    save_file({k: v.contiguous() for k, v in state.items()}, "lpips_vgg.safetensors")

(with the ``lpips`` package installed, ``save_file(lpips.LPIPS(net="vgg").state_dict(), ...)`` writes
the same keys plus the scaling layer). Loaded modules are cached per (file, device), so a method keeps
only the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meanflow.errors import UserError

VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
"""VGG16's convolutions (3x3, padding 1, each followed by ReLU) and 2x2 max pools ("M"), up to relu5_3."""
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
INPUT_SIZE = 224
MIN_SIZE = 16


def official_conv_names() -> list[str]:
    """Key prefixes of the 13 convolutions in the official state dict, in network order.

    torchvision numbers ``features`` as conv, relu, conv, relu, pool, ...; the official wrapper keeps those
    numbers and puts modules 0-3, 4-8, 9-15, 16-22, 23-29 into ``net.slice1`` ... ``net.slice5``.
    """
    names, index, part = [], 0, 1
    for item in VGG16_CONFIG:
        if item == "M":
            part += 1
            index += 1
        else:
            names.append(f"net.slice{part}.{index}")
            index += 2
    return names


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every required key of a weights file and its shape."""
    shapes, c_in = {}, 3
    convs = iter(official_conv_names())
    for item in VGG16_CONFIG:
        if item != "M":
            name = next(convs)
            shapes[f"{name}.weight"] = (item, c_in, 3, 3)
            shapes[f"{name}.bias"] = (item,)
            c_in = item
    for i, c in enumerate(CHANNELS):
        shapes[f"lin{i}.model.1.weight"] = (1, c, 1, 1)
    return shapes


class VGG16Features(nn.Module):
    """VGG16 convolutions up to relu5_3: ``[B, 3, H, W] -> `` the five tapped activations."""

    def __init__(self):
        super().__init__()
        widths = [c for c in VGG16_CONFIG if c != "M"]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip([3, *widths[:-1]], widths))

    def forward(self, x: Tensor) -> list[Tensor]:
        taps, convs = [], iter(self.convs)
        for item in VGG16_CONFIG:
            if item == "M":
                taps.append(x)  # the relu before each pool is a tap, as is the last one
                x = F.max_pool2d(x, 2)
            else:
                x = F.relu(next(convs)(x))
        return [*taps, x]


class LPIPS(nn.Module):
    """LPIPS-VGG: ``forward(a, b) -> [B]`` distances (see the module docstring for the formula)."""

    def __init__(self):
        super().__init__()
        # Constants, not weights: non-persistent so that the module's state dict is the learned part only.
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.vgg = VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)

    @classmethod
    def from_official(cls, state: dict[str, Tensor]) -> LPIPS:
        """The module holding a validated official state dict (see :func:`load_state_dict`), in eval
        mode and frozen; its tensors are those of ``state`` (no copy, no random init first)."""
        ours = {}
        for i, name in enumerate(official_conv_names()):
            ours[f"vgg.convs.{i}.weight"] = state[f"{name}.weight"]
            ours[f"vgg.convs.{i}.bias"] = state[f"{name}.bias"]
        for i in range(len(CHANNELS)):
            ours[f"lins.{i}.weight"] = state[f"lin{i}.model.1.weight"]
        with torch.device("meta"):
            model = cls()
        model.load_state_dict(ours, assign=True)
        model.shift = torch.tensor(SHIFT).view(1, 3, 1, 1)  # the constant buffers, off the meta device
        model.scale = torch.tensor(SCALE).view(1, 3, 1, 1)
        return model.eval().requires_grad_(False)

    def features(self, x: Tensor, resize: int | None) -> list[Tensor]:
        """Channel-normalised activations ``u_l`` of images ``[B, 1 or 3, H, W]`` in [-1, 1]."""
        x = x.to(self.shift.dtype)
        if resize is not None and tuple(x.shape[-2:]) != (resize, resize):
            x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out = []
        for f in self.vgg((x - self.shift) / self.scale):
            # vector_norm's backward is 0 where the norm is 0 (a pixel where every ReLU is off); the
            # official sqrt(sum f^2) would give NaN gradients there. The values are the same.
            out.append(f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + EPS))
        return out

    def forward(self, a: Tensor, b: Tensor, resize: int | None = INPUT_SIZE) -> Tensor:
        """Per-sample LPIPS ``[B]`` (float32) between images ``a, b`` ``[B, 1 or 3, H, W]`` in [-1, 1].

        ``resize``: side both images are bilinearly resized to first (224 as in the CM code), ``None``:
        native size.
        """
        check_images(a, b, resize)
        total = a.new_zeros(a.shape[0], dtype=torch.float32)
        for lin, fa, fb in zip(self.lins, self.features(a, resize), self.features(b, resize)):
            total = total + lin((fa - fb).square()).mean(dim=(1, 2, 3)).float()
        return total


def check_images(a: Tensor, b: Tensor, resize: int | None) -> None:
    """UserError unless ``a`` and ``b`` are same-shaped grey or RGB image batches LPIPS can take."""
    if a.shape != b.shape:
        raise UserError(f"LPIPS compares batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() != 4 or a.shape[1] not in (1, 3):
        raise UserError(f"LPIPS needs images [B, 1 or 3, H, W], got shape {tuple(a.shape)}")
    side = min(a.shape[-2:]) if resize is None else resize
    if side < MIN_SIZE:
        raise UserError(f"LPIPS needs images of at least {MIN_SIZE} x {MIN_SIZE} (VGG16 halves them four "
                        f"times), got {tuple(a.shape[-2:])}; resize them (lpips_resize)")


def _read(path: Path) -> dict:
    """The file's contents: safetensors by its header, else ``torch.load(weights_only=True)``."""
    from meanflow.utils.files import file_head

    head = file_head(path, "LPIPS weights file", 9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON object
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise UserError(f"LPIPS weights file {path} is not a readable safetensors file "
                            f"({_short(exc)})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, not a torch file, or a pickle that holds code
        msg = _short(exc)
        if "weights only load failed" in msg.lower():  # torch's advice to unpickle is not ours
            msg = ("it holds pickled Python objects, not only tensors; refused, never unpickled"
                   if "global" in msg.lower() else "not a torch.save file of tensors")
        raise UserError(f"LPIPS weights file {path} is neither a safetensors file nor a readable PyTorch "
                        f"weights file ({msg[:200]})") from exc


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read and validate an LPIPS-VGG weights file (key layout in the module docstring).

    Returns:
        The official state dict, float32, without the optional scaling-layer keys.
    """
    from meanflow.utils.files import check_input_file

    path = check_input_file(Path(path).expanduser(), "LPIPS weights file")
    state = _read(path)
    what = f"LPIPS weights file {path}"
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{what} does not hold a state dict of tensors")
    shapes = expected_shapes()
    constants = {"scaling_layer.shift": SHIFT, "scaling_layer.scale": SCALE}
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes and k not in constants]
    if missing or unexpected:
        parts = [f"{len(missing)} missing keys (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})"] if unexpected else []
        raise UserError(f"{what} is not an LPIPS-VGG state dict (net.sliceK.N.weight/bias and "
                        f"linL.model.1.weight keys): " + ", ".join(parts))
    for k, values in constants.items():
        if k in state and not torch.allclose(state[k].double().flatten(), torch.tensor(values).double()):
            raise UserError(f"{what}: {k} is {state[k].flatten().tolist()}, expected {list(values)}")
    out = {}
    for k, shape in shapes.items():
        v = state[k]
        if tuple(v.shape) != shape:
            raise UserError(f"{what}: {k} has shape {tuple(v.shape)}, expected {shape}")
        if not v.is_floating_point() or not torch.isfinite(v).all():
            raise UserError(f"{what}: {k} must hold finite floating-point values")
        if k.startswith("lin") and bool((v < 0).any()):
            raise UserError(f"{what}: {k} has negative weights (LPIPS lin weights are non-negative)")
        out[k] = v.float()
    return out


_CACHE: dict[tuple[str, str], LPIPS] = {}


def get_lpips(path: str | os.PathLike, device: str | torch.device = "cpu") -> LPIPS:
    """The frozen LPIPS module of a weights file on ``device``, loaded on first use, then cached.

    The cache is keyed by the resolved path and the device; the file is not re-read when it changes.
    """
    device = torch.device(device)
    key = (str(Path(path).expanduser().resolve()), str(device))
    model = _CACHE.get(key)
    if model is None:
        model = LPIPS.from_official(load_state_dict(path)).to(device)
        _CACHE[key] = model
    return model


def clear_cache() -> None:
    """Forget every loaded LPIPS module (tests; or after replacing a weights file)."""
    _CACHE.clear()


def lpips_distance(a: Tensor, b: Tensor, weights: str | os.PathLike,
                   resize: int | None = INPUT_SIZE) -> Tensor:
    """LPIPS-VGG ``[B]`` (float32) between image batches ``a, b`` ``[B, 1 or 3, H, W]`` in [-1, 1].

    Args:
        a: Images; gradients flow back to them.
        b: Images of the same shape.
        weights: The weights file (see the module docstring); loaded once per device.
        resize: Side both images are bilinearly resized to (224, as the CM code does); ``None``: native.
    """
    check_images(a, b, resize)
    return get_lpips(weights, a.device)(a, b, resize)
