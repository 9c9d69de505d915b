"""The image tokenizer of the latent presets: diffusers' `AutoencoderKL` (SD VAE, ft-mse by default).

Conventions (SPEC §1, the LDM / DiT / MeanFlow code): images in [-1, 1] are encoded to a diagonal
Gaussian posterior N(mean, std^2) of shape [4, H/8, W/8]; the training latent is a fresh draw scaled
by the SD factor, `z = 0.18215 * (mean + std * e)`, and samples are decoded as `vae.decode(z / 0.18215)`.

A VAE is identified by a fingerprint (sha256 of its config and every weight), so a cache, a run and
the VAE that decodes its samples can be checked to belong together.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from meanflow.errors import UserError

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
SD_VAE_SCALE = 0.18215
MIN_DIFFUSERS = "0.42"


@dataclass(frozen=True)
class VaeIdentity:
    """What a cache / checkpoint records about the VAE its latents came from."""

    name: str
    """How it was given: a local folder or a Hugging Face hub id."""
    fingerprint: str
    """sha256 (hex, 16 chars) of the config and all weights."""
    scale: float
    """Latent scale factor (config `scaling_factor`; SD: 0.18215)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> VaeIdentity:
        try:
            return VaeIdentity(str(d["name"]), str(d["fingerprint"]), float(d["scale"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"malformed VAE record {d!r}") from None


def require_diffusers():
    """The `diffusers` module, or a one-line UserError saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise UserError("the latent (VAE) path needs diffusers: pip install 'meanflow[latent]' "
                        f"(diffusers>={MIN_DIFFUSERS})") from None
    return diffusers


def load_vae(name: str = DEFAULT_VAE, device: str | torch.device = "cpu"):
    """`AutoencoderKL.from_pretrained(name, use_safetensors=True)` in eval mode, float32, without
    gradients: a folder holding only a pickled `.bin` is refused, never unpickled.

    Args:
        name: a local folder written by `save_pretrained` (config.json + weights), or a hub id such as
            'stabilityai/sd-vae-ft-mse' (downloaded once into the Hugging Face cache when online).
        device: where the VAE runs.
    """
    diffusers = require_diffusers()
    local = Path(name).expanduser()
    if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise UserError(f"--vae {name}: no such folder (and not a hub id like {DEFAULT_VAE})")
    try:
        with quiet_loading():
            vae = diffusers.AutoencoderKL.from_pretrained(str(local) if local.exists() else name,
                                                          torch_dtype=torch.float32, low_cpu_mem_usage=False,
                                                          use_safetensors=True)
    except Exception as e:  # OSError (offline, missing files, only a pickled .bin), ValueError, ...
        msg = " ".join(str(e).split())[:300]
        hint = "" if local.exists() else " (offline? pass a local folder saved with save_pretrained)"
        raise UserError(f"cannot load the VAE {name!r} from safetensors{hint}: {msg}") from None
    return vae.to(device).eval().requires_grad_(False)


@contextlib.contextmanager
def quiet_loading():
    """Silence what the hub and diffusers print while a VAE loads (retry warnings, "An error occurred
    while trying to fetch ...", deprecation notices), so that a failure is the command's one line."""
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils.logging as hf_logging

    levels = hf_logging.get_verbosity(), diffusers_logging.get_verbosity()
    hf_logging.set_verbosity(logging.CRITICAL)  # diffusers logs a failed fetch as an error, then raises
    diffusers_logging.set_verbosity(logging.CRITICAL)
    try:
        with warnings.catch_warnings():  # library deprecation notices, not the user's business
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(levels[0])
        diffusers_logging.set_verbosity(levels[1])


def vae_identity(vae, name: str) -> VaeIdentity:
    """The fingerprint of `vae`: sha256 of its JSON config (public keys) and every state tensor."""
    h = hashlib.sha256()
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for k, v in sorted(vae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    scale = float(getattr(vae.config, "scaling_factor", None) or SD_VAE_SCALE)
    return VaeIdentity(name=str(name), fingerprint=h.hexdigest()[:16], scale=scale)


def check_same_vae(expected: VaeIdentity, got: VaeIdentity, what: str) -> None:
    """UserError unless `got` is the VAE `what` was made with."""
    if expected.fingerprint != got.fingerprint:
        raise UserError(f"{what} was made with VAE {expected.name!r} (fingerprint {expected.fingerprint}), "
                        f"but VAE {got.name!r} has fingerprint {got.fingerprint}: use the same VAE")


@torch.no_grad()
def encode_posterior(vae, images: np.ndarray, device: str | torch.device = "cpu"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior of uint8 images.

    Args:
        vae: an `AutoencoderKL`.
        images: uint8 [B, H, W, 3].

    Returns:
        (mean, std), float32 [B, C, H/f, W/f] on the CPU (unscaled: no 0.18215 applied).
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = (x / 127.5 - 1.0).to(device)
    dist = vae.encode(x).latent_dist
    return dist.mean.float().cpu(), dist.std.float().cpu()


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, scale: float = SD_VAE_SCALE, batch_size: int = 32,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Images of scaled latents: `vae.decode(z / scale)` clamped to [-1, 1].

    Args:
        z: float [N, C, h, w], latents as the model generates them (scaled by `scale`).

    Returns:
        float32 [N, 3, h f, w f] in [-1, 1] on the CPU (quantise with `utils.images.to_uint8`).
    """
    if z.ndim != 4:
        raise UserError(f"latents must be [N, C, h, w], got shape {tuple(z.shape)}")
    c = int(vae.config.latent_channels)
    if z.shape[1] != c:
        raise UserError(f"the VAE takes {c}-channel latents, the samples have {z.shape[1]} channels")
    out = [vae.decode(z[i:i + batch_size].to(device).float() / scale).sample.float().clamp(-1, 1).cpu()
           for i in range(0, len(z), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 3, 0, 0)


def latent_decoder(recorded: dict | None, name: str | None = None, device: str | torch.device = "cpu",
                   batch_size: int = 32):
    """The function `z -> images` for a latent model's samples.

    Args:
        recorded: the VAE record of the run's checkpoint (`state['vae']`), or None (older runs).
        name: VAE folder / hub id to decode with (default: the recorded one). Its fingerprint must match
            the recorded one: latents of one VAE decode to noise with another.

    Returns:
        (decode, identity): `decode(z [B, C, h, w]) -> float32 [B, 3, H, W]` in [-1, 1].
    """
    if name is None:
        if recorded is None:
            raise UserError("this run records no VAE (trained on pre-encoded latents): pass --vae "
                            "FOLDER_OR_HUB_ID")
        name = str(recorded.get("name"))
    vae = load_vae(name, device)
    ident = vae_identity(vae, name)
    if recorded is not None:
        check_same_vae(VaeIdentity.from_dict(recorded), ident, "this run's training data")
    scale = float(recorded["scale"]) if recorded is not None else ident.scale
    return (lambda z: decode_latents(vae, z, scale, batch_size, device)), ident
