"""Checkpoints: one safetensors file per step, no pickle anywhere.

File `checkpoints/ckpt-0001000.safetensors` holds the tensors under prefixes

    model/<name>            raw weights (the network's state_dict)
    ema/<key>/<name>        one set per EMA: its decay (ema/0.9999/...) or half-life (ema/500kimg/...)
    optim/<i>/<key>         optimizer state tensors of parameter i (exp_avg, exp_avg_sq, step)
    target/<name>           the target network of a method that declares one (meanflow.training.target)

and, in the safetensors metadata (str -> str), JSON documents: `config` (the resolved config),
`state` (step, optimizer param groups and non-tensor state, data sampler state, seed, world size).
Files are written to a temporary name and moved into place with os.replace, so a crash never leaves a
half-written checkpoint under the final name; only the last `keep_last` are kept.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from meanflow.errors import UserError
from meanflow.utils.files import atomic_files, save_safetensors

CKPT_RE = re.compile(r"^ckpt-(\d+)\.safetensors$")
# Temporary files of an interrupted atomic write (`.<name>.tmp<pid>[.ext]`), in a run folder or below,
# and safetensors' own temp files (`.tmpXXXXXX`, renamed to ours once complete) in checkpoints/.
TEMP_RE = re.compile(r"^\..+\.tmp\d+(\.[a-z]+)?$")
LIBRARY_TEMP_RE = re.compile(r"^\.tmp[A-Za-z0-9_]{6,}$")
FORMAT = "meanflow-checkpoint-v1"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:07d}.safetensors"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run folder, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run folder."""
    p = Path(path)
    if p.is_dir():
        ckpts = list_checkpoints(p)
        if not ckpts:
            raise UserError(f"no checkpoint in run folder {p}")
        return ckpts[-1]
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    return p


def ema_key(key: float | str) -> float | str:
    """An EMA's key as stored: a decay as a float, a half-life name ('500kimg') as it is."""
    return key if isinstance(key, str) else float(key)


def ema_prefix(key: float | str) -> str:
    """The checkpoint group of EMA `key`: ``ema/0.9999/`` for a decay, ``ema/500kimg/`` for a half-life."""
    key = ema_key(key)
    return f"ema/{key}/" if isinstance(key, str) else f"ema/{key!r}/"


def _optim_to_flat(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim/{idx}/{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _optim_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = val
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = [{k: tuple(v) if k in ("betas", "ns_coefficients") else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: str | Path, *, model: dict[str, torch.Tensor],
                    ema: dict[float | str, dict[str, torch.Tensor]], optimizer: dict | None,
                    config: dict, state: dict, target: dict[str, torch.Tensor] | None = None) -> Path:
    """Write one checkpoint file atomically. `ema` maps each EMA key (decay or half-life name) to its
    state_dict; `optimizer` is `optimizer.state_dict()`; `target` the target network's state_dict
    (methods with a target network)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.items()}
    if target is not None:
        tensors.update({f"target/{k}": v.detach().cpu().contiguous() for k, v in target.items()})
    for d, sd in ema.items():
        tensors.update({f"{ema_prefix(d)}{k}": v.detach().cpu().contiguous() for k, v in sd.items()})
    state = dict(state)
    if optimizer is not None:
        opt_tensors, opt_meta = _optim_to_flat(optimizer)
        tensors.update(opt_tensors)
        state["optimizer"] = opt_meta
    state["ema_decays"] = [ema_key(d) for d in ema]
    state["has_target"] = target is not None
    metadata = {"format": FORMAT, "config": json.dumps(config), "state": json.dumps(state)}
    with atomic_files(user_errors=False) as files:
        save_safetensors(tensors, files.tmp(path), metadata=metadata, writer=save_file)
    return path


def _check_safetensors_header(path: Path) -> None:
    """UserError naming what `path` is when it is not a complete safetensors file (8-byte little-endian
    header length, a JSON header, then the tensor bytes it lists), instead of the library's 'header too
    large' or 'incomplete metadata'."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = f.read(n) if 2 <= n <= size - 8 else b""
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if size == 0:
        raise UserError(f"checkpoint {path} is an empty file")
    if not header.startswith(b"{"):
        plain = head[:2] == b"PK"
        kind = "a zip archive (a torch.save pickle?)" if plain else "not a safetensors file"
        if 8 < n < 1 << 27 and not plain:  # a plausible header length beyond the end: cut short
            raise UserError(f"checkpoint {path} is truncated ({size} bytes; its header alone needs {8 + n})")
        raise UserError(f"checkpoint {path} is {kind}; meanflow checkpoints are safetensors files written "
                        "by `meanflow train`")
    try:
        entries = json.loads(header)
        end = max((int(v["data_offsets"][1]) for k, v in entries.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise UserError(f"checkpoint {path} has a corrupt safetensors header") from None
    if 8 + n + end > size:
        raise UserError(f"checkpoint {path} is truncated ({size} bytes, its header lists {8 + n + end})")


def run_dir_of(ckpt_path: str | Path) -> Path | None:
    """The run folder a checkpoint file belongs to (`<run>/checkpoints/ckpt-*.safetensors`), or None
    for a checkpoint that was copied elsewhere."""
    p = Path(ckpt_path)
    return p.parent.parent if p.parent.name == "checkpoints" else None


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files that a killed run left behind in `run_dir`, its `checkpoints/` and
    `samples/` (never under a final name, never counted as checkpoints). Only call this while no other
    process writes into the run. Returns the paths removed."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints", Path(run_dir) / "samples"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            ours = TEMP_RE.match(p.name) or (folder.name == "checkpoints" and LIBRARY_TEMP_RE.match(p.name))
            if ours and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    for p in list_checkpoints(run_dir)[:-keep_last]:
        p.unlink(missing_ok=True)


class Checkpoint:
    """A loaded checkpoint: `config` (dict), `state` (dict), and tensor groups on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = find_checkpoint(path)
        _check_safetensors_header(self.path)
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                self._keys = list(f.keys())
            if meta.get("format") != FORMAT:
                raise UserError(f"{self.path} is a safetensors file but not a meanflow checkpoint "
                                "(no 'format: meanflow-checkpoint-v1' metadata)")
            self.config: dict = json.loads(meta["config"])
            self.state: dict = json.loads(meta["state"])
            if not isinstance(self.config, dict) or not isinstance(self.state, dict):
                raise ValueError("config and state metadata must be JSON objects")
            int(self.state["step"])
        except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot read checkpoint {self.path}: {msg}") from None
        groups = ["model/", *(ema_prefix(d) for d in self.ema_decays)]
        groups += ["target/"] if self.state.get("has_target") else []
        missing = [g for g in groups if not any(k.startswith(g) for k in self._keys)]
        has_optim = any(k.startswith("optim/") for k in self._keys)
        if "optimizer" in self.state and self.step > 0 and not has_optim:
            missing.append("optim/")
        if missing:
            raise UserError(f"checkpoint {self.path} is incomplete: it has no {', '.join(missing)} tensors")

    def require(self, prefix: str, names) -> None:
        """UserError unless the group `prefix` holds exactly the tensors `names` (e.g. a state_dict's
        keys): a crafted or foreign file is reported as such, not as a KeyError."""
        have = {k[len(prefix):] for k in self._keys if k.startswith(prefix)}
        names = set(names)
        if have != names:
            miss, extra = sorted(names - have), sorted(have - names)
            what = (f"missing {prefix}{miss[0]}" + (f" (and {len(miss) - 1} more)" if len(miss) > 1 else "")
                    if miss else f"unexpected {prefix}{extra[0]}")
            raise UserError(f"checkpoint {self.path} does not match its config: {what}")

    def _group_raw(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors whose name starts with `prefix`, read lazily (sampling never loads the optimizer)."""
        try:
            with safe_open(str(self.path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in self._keys if k.startswith(prefix)}
        except (SafetensorError, OSError) as e:
            raise UserError(f"cannot read checkpoint {self.path}: {e}") from None

    def _group(self, prefix: str) -> dict[str, torch.Tensor]:
        n = len(prefix)
        return {k[n:]: v for k, v in self._group_raw(prefix).items()}

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def ema_decays(self) -> list[float | str]:
        """The keys of the EMAs held: decays (floats) and half-life names ('500kimg')."""
        return [ema_key(d) for d in self.state.get("ema_decays", [])]

    def model(self) -> dict[str, torch.Tensor]:
        return self._group("model/")

    def load_into(self, net, prefix: str = "model/", fresh: tuple[str, ...] = ()) -> None:
        """Load the group `prefix` (`model/`, `ema/<decay>/`, `target/`) into `net`, checked by
        :meth:`tensors_like`. Tensors of `net` whose names start with one of `fresh` and that the group
        does not hold keep their initial values (a new head on a pretrained network)."""
        ref = net.state_dict()
        have = {k[len(prefix):] for k in self._keys if k.startswith(prefix)}
        keep = {k: v for k, v in ref.items() if k in have or not k.startswith(tuple(fresh))}
        tensors = self.tensors_like(prefix, keep)
        net.load_state_dict({**ref, **{k: tensors[k].to(v.dtype) for k, v in keep.items()}})

    def tensors_like(self, prefix: str, ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The group `prefix`, after checking that its names, shapes and kinds match the state dict
        `ref`; a mismatch is a UserError naming the first difference."""
        self.require(prefix, ref.keys())
        tensors = self._group(prefix)
        for k, v in ref.items():
            bad = f"checkpoint {self.path} does not match its config: {prefix}{k}"
            if tensors[k].shape != v.shape:
                raise UserError(f"{bad} has shape {list(tensors[k].shape)}, "
                                f"the network expects {list(v.shape)}")
            if v.is_floating_point() and not tensors[k].is_floating_point():
                raise UserError(f"{bad} has dtype {tensors[k].dtype}, expected floating point")
        return tensors

    def nonfinite(self, prefixes: tuple[str, ...] = ("model/", "ema/", "target/")) -> list[str]:
        """Names of the floating-point tensors under `prefixes` that hold a NaN or an infinity (read one
        at a time: memory stays at one tensor)."""
        bad = []
        try:
            with safe_open(str(self.path), framework="pt") as f:
                for k in self._keys:
                    if k.startswith(prefixes):
                        t = f.get_tensor(k)
                        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                            bad.append(k)
        except (SafetensorError, OSError) as e:
            raise UserError(f"cannot read checkpoint {self.path}: {e}") from None
        return bad

    def ema(self, key: float | str) -> dict[str, torch.Tensor]:
        """The weights of EMA `key` (a decay or a half-life name); UserError listing the EMAs held."""
        key = ema_key(key)
        if key not in self.ema_decays:
            have = ", ".join(str(d) for d in self.ema_decays) or "none"
            raise UserError(f"checkpoint {self.path.name} has no EMA {key} (has: {have})")
        return self._group(ema_prefix(key))

    def optimizer(self) -> dict | None:
        if "optimizer" not in self.state:
            return None
        return _optim_from_flat(self._group_raw("optim/"), self.state["optimizer"])
