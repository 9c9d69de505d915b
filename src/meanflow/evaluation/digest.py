"""sha256 checks of user-supplied weights files (the perceptual networks of pMF).

The project ships no pretrained weights and never downloads any at train time: the user names a local
file and, optionally, the sha256 it must have. A mismatch is a one-line :class:`UserError`.
"""

from __future__ import annotations

import os
import re

from meanflow.errors import UserError

_HEX = re.compile(r"[0-9a-f]{8,64}")


def check_sha256_format(expected: str | None, what: str) -> None:
    """One-line UserError unless ``expected`` is None or 8..64 hex digits (a full digest or a prefix)."""
    if expected is not None and not _HEX.fullmatch(str(expected).lower()):
        raise UserError(f"{what} sha256 must be 8 to 64 hex digits (the digest or its prefix), "
                        f"got {expected!r}")


def check_sha256(path: str | os.PathLike, expected: str | None, what: str) -> str:
    """The file's sha256 (hex); a one-line UserError when ``expected`` is given and the digest does not
    start with it (case-insensitive)."""
    from meanflow.data.pairs import sha256_file

    check_sha256_format(expected, what)
    digest = sha256_file(path)
    if expected is not None and not digest.startswith(str(expected).lower()):
        raise UserError(f"{what} {path} has sha256 {digest}, expected {str(expected).lower()}...: "
                        "not the file this run was configured with")
    return digest
