"""Write a converted checkpoint where `meanflow sample`, `meanflow eval` and `meanflow train --resume`
read it: a checkpoint file, or a run folder.

    OUT.safetensors     one checkpoint file (resuming from it starts a new numbered run folder)
    OUT/                a run folder: OUT/config.yaml, OUT/config.json and
                        OUT/checkpoints/ckpt-<step>.safetensors (resuming continues in OUT)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from meanflow.convert.py_meanflow import Converted
from meanflow.errors import UserError
from meanflow.utils.files import atomic_files, reason


def write_converted(conv: Converted, out: str | Path, force: bool = False,
                    source: str = "the checkpoint") -> Path:
    """Write `conv` to `out` (a ``.safetensors`` file name, else a run folder); returns the checkpoint
    file. An existing file, or a non-empty folder, is refused unless `force`; so are NaN or infinite
    weights (`source` names the file they came from)."""
    from meanflow.training.checkpoint import checkpoint_path, save_checkpoint
    from meanflow.training.config_io import config_from_dict, config_to_yaml

    _refuse_nonfinite(conv, source)
    out = Path(out)
    if out.suffix == ".safetensors":
        if out.is_dir():
            raise UserError(f"output {out} is a folder; give a file name or a run folder without the "
                            ".safetensors suffix")
        if out.exists() and not force:
            raise UserError(f"output {out} exists (use --force to replace it)")
        ckpt, run_dir = out, None
    else:
        if out.exists() and not out.is_dir():
            raise UserError(f"output {out} is a file; name a .safetensors file or a run folder")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise UserError(f"output folder {out} is not empty (use --force to write into it)")
        ckpt, run_dir = checkpoint_path(out, conv.state["step"]), out
    fresh_dir, fresh_ckpt = run_dir is not None and not out.exists(), not ckpt.exists()
    try:
        save_checkpoint(ckpt, model=conv.model, ema=conv.ema, optimizer=conv.optimizer, config=conv.config,
                        state=conv.state)
        if run_dir is not None:
            cfg = config_from_dict(conv.config)
            with atomic_files("the run config") as files:
                files.tmp(run_dir / "config.yaml").write_text(config_to_yaml(cfg))
                files.tmp(run_dir / "config.json").write_text(json.dumps(conv.config, indent=2) + "\n")
    except (OSError, UserError) as e:  # leave nothing half-written: no checkpoint without its config
        if fresh_dir:
            shutil.rmtree(out, ignore_errors=True)
        elif fresh_ckpt and run_dir is not None:
            ckpt.unlink(missing_ok=True)
        if isinstance(e, UserError):
            raise
        raise UserError(f"cannot write {ckpt}: {reason(e)}") from None
    return ckpt


def _refuse_nonfinite(conv: Converted, source: str) -> None:
    """UserError naming the first weight (raw or EMA) holding NaN or infinite values: such a checkpoint
    cannot produce samples, so it is not written."""
    import torch

    groups = [("model", conv.model), *((f"ema {d!r}", sd) for d, sd in conv.ema.items())]
    bad = [f"{where}: {k}" for where, sd in groups for k, v in sd.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise UserError(f"{source} holds non-finite weights ({bad[0]}{more}): they cannot produce samples; "
                        "nothing was written")
