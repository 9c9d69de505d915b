"""Read a ``torch.save`` checkpoint without running code from it.

A ``.pth`` file is a pickle: loaded with plain ``torch.load`` it may call any function it names (a
crafted file can run ``os.system``). Here it is read with PyTorch's restricted unpickler
(``weights_only=True``), which rebuilds tensors, containers and numbers only, plus the one class a
training script's checkpoint also needs, ``argparse.Namespace`` (its saved command-line options, built
from a dict of plain values). Any other global the file names is refused before it is called.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from meanflow.errors import UserError

ALLOWED_GLOBALS = (argparse.Namespace,)
"""Classes a checkpoint may name beyond tensors and plain containers."""


def read_torch_checkpoint(path: str | Path) -> Any:
    """The object of a ``torch.save`` file, on the CPU, read without executing code from it.

    Raises:
        UserError: missing / empty / truncated / not a torch file, or a pickle that names a global
            outside tensors, containers and :data:`ALLOWED_GLOBALS` (possibly malicious: refused).
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise UserError(f"checkpoint {p} is not a file")
    size = p.stat().st_size
    if size == 0:
        raise UserError(f"checkpoint {p} is an empty file")
    with open(p, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # a torch zip archive, or a legacy pickle (protocol 2+)
        raise UserError(f"checkpoint {p} is not a readable torch.save file (neither a zip archive nor a "
                        "pickle)")
    if head[:2] == b"PK" and not zipfile.is_zipfile(p):
        raise UserError(f"checkpoint {p} is truncated or corrupt ({size} bytes; its zip directory is "
                        "missing)")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise UserError(f"refusing to load {p}: it asks to call {found.group(1)}, which a checkpoint of "
                            "weights never needs (the file may be malicious; it was not run)") from None
        raise UserError(f"checkpoint {p} is not a torch.save file this tool can read safely "
                        f"({_reason(e)})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserError(f"checkpoint {p} is not a readable torch.save file (truncated, corrupt or another "
                        f"format: {_first_line(e)})") from None


def _reason(e: BaseException) -> str:
    """The informative line of a weights-only load failure (torch wraps it in a long explanation)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    boiler = ("Weights only load failed", "Check the documentation")
    useful = [ln for ln in lines if not ln.startswith(boiler)]
    return (useful or lines or [type(e).__name__])[0][:160]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__
