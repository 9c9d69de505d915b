"""Finding, verifying and downloading dataset files.

Every problem a user can cause here (a missing file, a failed checksum, a failed download)
raises :class:`~meanflow.errors.UserError` with a one-line message naming the file.
Downloads are atomic: bytes go to a temporary file in the target folder, are checked, and only
then renamed into place, so an interrupted or corrupted download never leaves a bad file behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from meanflow.errors import UserError

_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation; a stalled mirror must fail, not hang


def cache_dir() -> Path:
    """The cache root: ``$MEANFLOW_CACHE`` if set, else ``~/.cache/meanflow``."""
    env = os.environ.get("MEANFLOW_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "meanflow"


def dataset_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """The folder holding a dataset's files: ``data_dir`` if given, else ``cache_dir() / name``."""
    return Path(data_dir).expanduser() if data_dir is not None else cache_dir() / name


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest (``"md5"`` or ``"sha256"``) of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, expected: str, algorithm: str = "md5") -> None:
    """Raise UserError unless ``path`` exists and its digest equals ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    got = file_digest(path, algorithm)
    if got != expected.lower():
        raise UserError(
            f"{path}: {algorithm} checksum mismatch (expected {expected}, got {got}); "
            "the file is corrupt, truncated or not the official one - delete it and download again"
        )


def locate(
    folder: Path,
    filename: str,
    *,
    dataset: str,
    urls: Sequence[str] = (),
    md5: str | None = None,
    download: bool = False,
) -> Path:
    """Return ``folder / filename``, downloading it first when missing and ``download`` is True.

    Args:
        folder: where the file lives (or will be saved).
        filename: the file's name.
        dataset: registry name, only used in messages.
        urls: mirrors tried in order, each the full URL of the file.
        md5: expected md5 of a download (checked before the file is renamed into place).
        download: fetch the file when it is missing.

    Raises:
        UserError: the file is missing and cannot (or may not) be downloaded.
    """
    path = folder / filename
    if path.is_file():
        return path
    if not download:
        hint = "pass download=True (CLI: --download) to fetch it, or " if urls else ""
        raise UserError(
            f"{dataset}: {path} not found; {hint}"
            f"point data_dir (CLI: --data-dir) at a folder holding {filename}"
        )
    if not urls:
        raise UserError(f"{dataset}: {path} not found and the dataset cannot be downloaded")
    download_file(urls, path, md5=md5)
    return path


def download_file(urls: Sequence[str], dest: Path, md5: str | None = None) -> Path:
    """Download the first mirror that works to ``dest`` atomically, checking ``md5`` if given.

    Raises:
        UserError: every mirror failed (network error or checksum mismatch); message lists why.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{dest.parent}: cannot create download folder ({e.strerror})") from None
    errors = []
    for url in urls:
        try:
            _fetch(url, dest, md5)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            errors.append(f"{url}: {reason}")
    raise UserError(f"could not download {dest.name}: " + "; ".join(errors))


def _fetch(url: str, dest: Path, md5: str | None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            while chunk := resp.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
        if md5 is not None and h.hexdigest() != md5:
            raise ValueError(f"md5 mismatch (expected {md5}, got {h.hexdigest()})")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
