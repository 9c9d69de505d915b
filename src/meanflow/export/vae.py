"""The VAE of a latent export: loaded from safetensors only and checked against the recorded fingerprint.

    vae = load_checked_vae(record)               # the record's `name`: a local folder or a Hub id
    vae = load_checked_vae(record, "my/vae")     # another copy; its fingerprint must match
"""

from __future__ import annotations

from pathlib import Path

import torch

from meanflow.errors import UserError


def load_checked_vae(record: dict | None, name: str | None = None, device: str | torch.device = "cpu"):
    """`AutoencoderKL.from_pretrained(name, use_safetensors=True)` (float32, eval, no gradients), after
    which its fingerprint must equal `record['fingerprint']` (latents of one VAE decode to noise with
    another).

    Args:
        record: the run's VAE record ``{name, fingerprint, scale}`` (None: nothing to check against;
            then `name` is required).
        name: a local folder or Hub id (default: the record's name).
        device: where the VAE is put.
    """
    from meanflow.latent.vae import (
        VaeIdentity,
        check_same_vae,
        quiet_loading,
        require_diffusers,
        vae_identity,
    )

    diffusers = require_diffusers()
    if name is None:
        if record is None:
            raise UserError("this model records no VAE (trained on pre-encoded latents): name one (--vae)")
        name = str(record.get("name"))
    local = Path(name).expanduser()
    try:
        with quiet_loading():
            vae = diffusers.AutoencoderKL.from_pretrained(str(local) if local.exists() else name,
                                                          torch_dtype=torch.float32, use_safetensors=True)
    except Exception as e:  # missing folder, only a pickled .bin, offline, bad config, ...
        hint = "" if local.exists() else " (offline? pass a local folder saved with save_pretrained)"
        raise UserError(f"cannot load the VAE {name!r} from safetensors{hint}: "
                        f"{' '.join(str(e).split())[:300]}") from None
    if record is not None:
        check_same_vae(VaeIdentity.from_dict(record), vae_identity(vae, name), "this model's latents")
    return vae.to(device).eval().requires_grad_(False)
