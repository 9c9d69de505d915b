"""Write an export folder (`meanflow export`, `MeanFlowPipeline.save_pretrained`), all or nothing.

Every file is written into a hidden staging folder beside the output (`.OUT.tmpPID`), flushed, and the
folder is renamed onto OUT only when complete; on any failure the staging folder is removed (and the
staging folders of killed processes are removed by the next export to the same name). OUT must not
exist or be an empty folder; `replace=True` (save_pretrained) instead moves the new files one by one
onto the old ones, each file complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from meanflow.errors import UserError
from meanflow.export.card import render_card
from meanflow.export.layout import CARD, CONFIG, SAMPLES, VAE_DIR, WEIGHTS
from meanflow.utils.files import reason, save_safetensors

GRID_SEED = 0


def check_output(out: str | Path, replace: bool = False) -> Path:
    """`out` as a Path, after checking that an export can be written there: absent or an empty folder
    (any folder with `replace`), and no regular file on its path."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UserError(f"output {out} is a file, not a folder")
        if not replace and any(out.iterdir()):
            raise UserError(f"output folder {out} exists and is not empty: choose a new folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"output {out}: {parent} is a file, not a folder")
            break
    return out


def draw_grid(method, net, steps: int, decode=None, device: str | torch.device = "cpu"):
    """The `samples.png` of an export: a PIL image and how it was drawn (``{n, steps, seed}``), or
    (None, None) for data that is neither images nor 2-D points. The images equal those of
    `meanflow sample OUT -n n --steps steps --seed 0`."""
    from meanflow.sampling import generate, generate_uint8, model_info
    from meanflow.utils.images import auto_scale, make_grid, png_image, points_image

    shape, classes = model_info(net)
    if len(shape) == 1 and shape[0] == 2:
        n = 1024
        x = generate(method, net, 0, n, steps=steps, seed=GRID_SEED, device=device)
        return png_image(points_image(x)), {"n": n, "steps": steps, "seed": GRID_SEED}
    if len(shape) != 3:
        return None, None
    n, ncol = (2 * classes, classes) if 0 < classes <= 10 else (16, 4)
    images = generate_uint8(method, net, n, steps=steps, seed=GRID_SEED, device=device, decode=decode)
    png = png_image(make_grid(images, ncol=ncol), scale=auto_scale(images.shape[1]))
    return png, {"n": n, "steps": steps, "seed": GRID_SEED}


def _fsync_tree(folder: Path) -> None:
    """Flush every file under `folder` to disk, readable as ordinary files are (umask permitting)."""
    mask = os.umask(0)
    os.umask(mask)
    for p in folder.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o666 & ~mask)
            with open(p, "rb+") as f:
                os.fsync(f.fileno())


def _stage(stage: Path, method, net, config: dict, vae, store_vae: bool, device, repo: str | None) -> dict:
    """Write every file of the export into the empty folder `stage`; returns the config written."""
    config = json.loads(json.dumps(config))
    decode = None
    if config["data"].get("is_latent"):
        from meanflow.latent.vae import decode_latents

        scale = float((config.get("vae") or {}).get("scale") or vae.config.scaling_factor)
        decode = (lambda z: decode_latents(vae, z, scale, 32, device)) if vae is not None else None
    png, grid = (None, None)
    if decode is not None or not config["data"].get("is_latent"):
        png, grid = draw_grid(method, net, int(config["sampling"]["grid_steps"]), decode, device)
    if grid is not None:
        config["sampling"]["grid"] = grid
        png.save(stage / SAMPLES, format="PNG")
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_safetensors(tensors, stage / WEIGHTS, metadata={"format": config["format"]})
    (stage / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (stage / CARD).write_text(render_card(config, repo), encoding="utf-8")
    if vae is not None and store_vae:
        vae.save_pretrained(str(stage / VAE_DIR), safe_serialization=True)
    _fsync_tree(stage)
    return config


def _remove_dead_stages(out: Path) -> None:
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.tmp(\d+)$")
    with contextlib.suppress(OSError):
        for p in out.parent.iterdir():
            m = pattern.match(p.name)
            if m and p.is_dir() and int(m.group(1)) != os.getpid():
                try:
                    os.kill(int(m.group(1)), 0)
                except ProcessLookupError:
                    shutil.rmtree(p, ignore_errors=True)
                except OSError:
                    pass


def _commit(stage: Path, out: Path) -> None:
    """Move the complete staging folder onto `out` (a rename), or its files into an existing `out`."""
    if not out.exists() or not any(out.iterdir()):
        os.replace(stage, out)  # an empty folder is replaced by the rename itself
        return
    for src in sorted(p for p in stage.rglob("*") if p.is_file()):
        dst = out / src.relative_to(stage)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    shutil.rmtree(stage, ignore_errors=True)


def write_export(out: str | Path, method, net, config: dict, *, vae=None, store_vae: bool = False,
                 repo: str | None = None, replace: bool = False, device: str | torch.device = "cpu") -> dict:
    """Write the export of (`method`, `net`) described by `config` (see `describe`) to folder `out`.

    Args:
        vae: the `AutoencoderKL` that decodes a latent model's samples for `samples.png` (drawn only
            when one is given); `store_vae` also saves it in `out/vae/` (safetensors).
        repo: 'ORG/NAME' the card's examples load from (None: a local folder).
        replace: write into an existing folder, replacing the export's files (else it must be empty).

    Returns:
        the config written (with the grid's settings under `sampling.grid`).
    """
    out = check_output(out, replace)
    missing = [p for p in (out.parent, *out.parent.parents) if not p.exists()][::-1]
    stage = out.parent / f".{out.name}.tmp{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_stages(out)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        written = _stage(stage, method, net, config, vae, store_vae, device, repo)
        _commit(stage, out)
    except OSError as e:
        raise UserError(f"cannot write the export {out}: {reason(e)}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for p in reversed(missing):
            if not out.exists():
                with contextlib.suppress(OSError):
                    p.rmdir()
    return written
