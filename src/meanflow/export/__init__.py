"""Self-describing export folders of trained generators (`meanflow export`, `meanflow push`, `hf://`).

    config = export_run("runs/00000-digits-meanflow", "exports/digits", ema=None)
    method, net, cfg = meanflow.load_generator("exports/digits")      # or "hf://ORG/NAME"

Layout and format: `meanflow.export.layout`; the description in config.json: `describe`; writing
(atomic): `write`; reading: `read`; the model card: `card`; the Hub: `hub`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meanflow.export.layout import FILES, FORMAT, is_export, is_hub_path

__all__ = ["FILES", "FORMAT", "export_run", "is_export", "is_hub_path"]


def export_run(path, out: str | Path, *, ema: Any = None, vae: str | None = None, include_vae: bool = False,
               repo: str | None = None, device: str = "cpu") -> dict:
    """Export the weights `ema` of run / checkpoint / export `path` to the new folder `out`.

    Args:
        path: run folder (newest checkpoint), checkpoint file, export folder or `hf://` export.
        out: the folder to create (absent or empty; nothing is written on any error).
        ema: None (the run's first EMA; raw weights without one), a decay, or 'raw'.
        vae: latent runs: the VAE (folder or Hub id) that decodes `samples.png`, default the recorded
            one; its fingerprint must match the run's.
        include_vae: latent runs: also store that VAE in `out/vae/`.
        repo: 'ORG/NAME' for the model card's examples.
        device: where the grid is drawn.

    Returns:
        the config.json written.
    """
    from meanflow.errors import UserError
    from meanflow.export.describe import open_generator
    from meanflow.export.write import check_output, write_export

    check_output(out)  # before the (possibly slow) load
    method, net, cfg, config = open_generator(path, ema=ema, device=device)
    latent = bool(config["data"].get("is_latent"))
    if not latent and (vae is not None or include_vae):
        raise UserError("--vae / --include-vae are for latent runs; this run generates pixels or points")
    decoder = None
    if latent:
        from meanflow.export.vae import load_checked_vae
        from meanflow.latent.vae import vae_identity

        decoder = load_checked_vae(getattr(net, "meanflow_vae", None), vae, device)
        if config.get("vae") is None:  # pre-encoded latents: record the VAE named here
            config = {**config, "vae": vae_identity(decoder, str(vae)).to_dict()}
    return write_export(out, method, net, config, vae=decoder, store_vae=include_vae, repo=repo,
                        device=device)
