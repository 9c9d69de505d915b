"""The export folder: its file names, its format tag, and reading its `config.json`.

    OUT/config.json         what the weights are: method and kwargs, network and its resolved kwargs,
                            data shape, classes, the VAE record of a latent run, which weights, metrics
    OUT/model.safetensors   one set of network weights (the chosen EMA, or the raw weights)
    OUT/samples.png         a small grid drawn with these weights (`meanflow sample OUT -n N --seed 0`)
    OUT/README.md           the model card
    OUT/vae/                (latent runs, `--include-vae`) the VAE, `config.json` + safetensors weights
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meanflow.errors import UserError
from meanflow.utils.files import reason

FORMAT = "meanflow-export-v1"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
SAMPLES = "samples.png"
CARD = "README.md"
VAE_DIR = "vae"
VAE_FILES = ("vae/config.json", "vae/diffusion_pytorch_model.safetensors")
FILES = (CONFIG, WEIGHTS, SAMPLES, CARD, *VAE_FILES)
"""Every file an export can hold: the only ones `meanflow push` uploads and `hf://` downloads."""
HF_PREFIX = "hf://"


def is_hub_path(path: Any) -> bool:
    """Whether `path` names an export on the Hugging Face Hub (``hf://ORG/NAME[@REVISION]``)."""
    return isinstance(path, str) and path.startswith(HF_PREFIX)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def is_export(path: Any) -> bool:
    """Whether `path` is an export folder: a folder whose `config.json` carries the export format tag
    (a run folder's `config.json` is the training config and has none)."""
    if is_hub_path(path):
        return False
    folder = Path(path)
    try:
        data = _read_json(folder / CONFIG) if folder.is_dir() else None
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def read_config(folder: str | Path) -> dict:
    """The `config.json` of export `folder`, checked for the keys a loader needs (UserError if not)."""
    folder = Path(folder)
    try:
        data = _read_json(folder / CONFIG)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {folder / CONFIG}: {reason(e)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{folder} is not a meanflow export (no 'format: {FORMAT}' in {CONFIG})")
    try:
        for section in ("method", "network"):
            str(data[section]["name"])
            dict(data[section]["kwargs"])
        [int(d) for d in data["data"]["shape"]]
        int(data["data"]["num_classes"])
        dict(data["training_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{folder / CONFIG} is malformed ({type(e).__name__}: {reason(e)})") from None
    return data


def weights_label(config: dict) -> str:
    """'EMA 0.9999' or 'raw weights': which weights an export holds."""
    ema = config.get("weights", {}).get("ema")
    if ema is None:
        return "raw weights"
    return f"EMA {ema}" if isinstance(ema, str) else f"EMA {float(ema)!r}"
