"""What an export's `config.json` says about its weights, and the metrics a run folder holds.

    method, net, cfg, config = open_generator("runs/00000-digits-meanflow", ema=None)
    config["method"] == {"name": "meanflow", "kwargs": {...}}; config["weights"]["ema"] == 0.999
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meanflow.export.layout import FORMAT


def _json_file(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_metrics(run_dir: Path | None) -> dict[str, dict]:
    """Measured metrics found in a run folder, by file name: `metrics.json` (the 2-D report: sliced W2,
    energy distance; the digits report: legible share of samples and of real digits) and every
    `*_eval.json` of `meanflow eval` (FID, KID, ...), numbers and settings only.
    Empty when there are none (or no run folder)."""
    if run_dir is None or not Path(run_dir).is_dir():
        return {}
    files = [Path(run_dir) / "metrics.json", *sorted(Path(run_dir).glob("*_eval.json"))]
    keep = ("fid", "kid", "kid_std", "inception_score", "inception_score_std", "sliced_wasserstein",
            "energy_distance", "legible", "legible_real", "ratio", "samples", "num_samples", "num_reference",
            "steps", "step", "seed", "omega", "ref")
    out = {}
    for f in files:
        data = _json_file(f) if f.is_file() else None
        if data is None:
            continue
        picked = {k: data[k] for k in keep if k in data and isinstance(data[k], (int, float, str, list))}
        if any(k in picked for k in ("fid", "kid", "sliced_wasserstein", "energy_distance", "legible")):
            out[f.name] = picked
    return out


def describe(method, net, cfg, *, ema: float | str | None, step: int, source: str,
             metrics: dict[str, dict] | None = None) -> dict[str, Any]:
    """The `config.json` of an export of `net` (loaded by `load_generator`, so it carries
    `meanflow_shape`, `meanflow_num_classes`, `meanflow_is_latent`, `meanflow_vae`).

    Args:
        method, net, cfg: as `load_generator` returns them.
        ema: the EMA of the weights (a decay, or a half-life name such as '1000kimg'), None for raw.
        step: training step of the checkpoint.
        source: where the weights came from (the checkpoint path).
        metrics: measured metrics (see `run_metrics`).
    """
    from meanflow import __version__
    from meanflow.sampling import model_info
    from meanflow.training.build import network_kwargs
    from meanflow.training.config_io import config_to_dict

    shape, classes = model_info(net)
    vae = getattr(net, "meanflow_vae", None)
    grid_steps = cfg.logging.sample_steps or method.default_steps
    return {
        "format": FORMAT,
        "meanflow_version": __version__,
        "method": {"name": cfg.method.name, "kwargs": dict(cfg.method.kwargs)},
        "network": {"name": cfg.network.name, "kwargs": network_kwargs(cfg, shape, classes, method),
                    "parameters": sum(p.numel() for p in net.parameters())},
        "data": {"name": cfg.data.name, "shape": list(shape), "num_classes": classes,
                 "is_latent": bool(getattr(net, "meanflow_is_latent", False))},
        "vae": None if vae is None else {k: vae[k] for k in ("name", "fingerprint", "scale") if k in vae},
        "weights": {"ema": ema, "step": int(step), "source": str(source)},
        "sampling": {"default_steps": int(method.default_steps), "grid_steps": int(grid_steps)},
        "metrics": dict(metrics or {}),
        "training_config": config_to_dict(cfg),
    }


def open_generator(path, ema: Any = None, device: str = "cpu"):
    """A run folder, checkpoint, export folder or `hf://` export as ``(method, net, cfg, config)``,
    where `config` is the export description (`describe`) of the chosen weights."""
    from meanflow.training.checkpoint import Checkpoint, run_dir_of
    from meanflow.training.load import ema_of_prefix, load_generator, weights_prefix

    method, net, cfg = load_generator(path, ema=ema, device=device)
    config = getattr(net, "meanflow_export", None)
    if config is not None:
        return method, net, cfg, config
    ckpt = Checkpoint(path)
    prefix = weights_prefix(ckpt, ema)
    decay = ema_of_prefix(prefix)
    run_dir = Path(path) if Path(path).is_dir() else run_dir_of(ckpt.path)
    config = describe(method, net, cfg, ema=decay, step=ckpt.step, source=str(ckpt.path),
                      metrics=run_metrics(run_dir))
    return method, net, cfg, config
