"""File plumbing for the commands: atomic outputs, output-folder checks, and pickle-free ``.npz`` input.

Outputs: every file is written to a hidden temp file in its own folder (``.NAME.tmpPID.EXT``) and moved
onto its final name with ``os.replace`` only once it is complete; on any failure (an ``OSError``, a
crash, Ctrl-C) the temps are removed. A final name therefore holds either its previous complete
content (or nothing) or the new complete file, never a partial one.

Inputs: ``.npz`` / ``.npy`` files are checked (exists, is a file, not empty, right magic bytes) and read
with ``allow_pickle=False``; an array of Python objects is refused, never unpickled.

Every problem becomes a :class:`~meanflow.errors.UserError` with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from meanflow.errors import UserError

NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty zip
NPY_MAGIC = b"\x93NUMPY"


def reason(exc: BaseException) -> str:
    """The short cause of an error: ``strerror`` of an ``OSError`` ("No space left on device"), else the
    first line of its message, else its type name."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------------
# Outputs


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: exists, owned by someone else
        return True
    return True


def remove_dead_temps(final: Path) -> None:
    """Delete the temps of `final` left by processes that no longer run (a `kill -9` mid-write)."""
    pattern = re.compile(rf"^\.{re.escape(final.stem)}\.tmp(\d+){re.escape(final.suffix)}$")
    with contextlib.suppress(OSError):
        for p in final.parent.iterdir():
            m = pattern.match(p.name)
            if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                p.unlink(missing_ok=True)


class AtomicFiles:
    """Output files written as temps beside their final names and moved into place by :meth:`commit`.

    ``files.tmp(final)`` registers ``final`` and returns the temp path to write to.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temp, final)
        self.current: Path | None = None  # the final name being written or moved (for messages)

    def tmp(self, final: str | os.PathLike) -> Path:
        final = Path(final)
        self.current = final
        remove_dead_temps(final)
        tmp = _tmp_name(final)
        self.pending.append((tmp, final))
        return tmp

    def commit(self) -> None:
        """Flush every temp to disk (a power loss never leaves an empty file under a final name),
        then move each onto its final name."""
        for tmp, final in self.pending:
            self.current = final
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        while self.pending:
            tmp, final = self.pending[0]
            self.current = final
            os.replace(tmp, final)
            self.pending.pop(0)

    def discard(self) -> None:
        for tmp, _ in self.pending:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        self.pending.clear()


@contextlib.contextmanager
def atomic_files(what: str = "output", user_errors: bool = True) -> Iterator[AtomicFiles]:
    """Write several files so that each final name gets the complete new file or stays as it was.

    Inside the block write to ``files.tmp(final)``; when the block ends normally every temp is moved
    onto its final name, in order. If the block fails, no final name is touched and the temps are
    removed. (Only a failing ``os.replace`` after an earlier one succeeded, which needs the folder to
    change under us, can leave a new file beside an old one; each file is still complete.)

    An ``OSError`` becomes ``UserError("cannot write {what} to {final}: {reason}")`` unless
    ``user_errors`` is False, when it propagates unchanged (library callers with their own handling).
    """
    files = AtomicFiles()
    try:
        yield files
        files.commit()
    except OSError as exc:
        if not user_errors:
            raise
        raise UserError(f"cannot write {what} to {files.current}: {reason(exc)}") from exc
    finally:
        files.discard()


def prepare_output(path: str | os.PathLike, label: str, create: bool = True) -> Path:
    """Check that file ``path`` can be created and (``create``) create its folder; ``label`` starts the
    messages (e.g. ``"--out /x/y.json"``). Refuses a path that is a folder, or one under a regular file.
    Call it with ``create=False`` before long work, to fail early without making any folder."""
    path = Path(path)
    if path.is_dir():
        where = label if label.endswith(str(path)) else f"{label}: {path}"
        raise UserError(f"{where} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UserError(f"{label}: {parent} is a file, not a folder")
            break
    if not create:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{label}: cannot create folder {path.parent}: {reason(exc)}") from exc
    return path


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None,
                     writer=None) -> None:
    """``safetensors.torch.save_file`` whose I/O failures raise an ``OSError`` (errno, strerror, path).

    safetensors writes the file itself (its own temp file beside ``path``, then a rename) and reports
    a full or read-only disk as a ``SafetensorError`` ("... No space left on device (os error 28) ...");
    turned into the ``OSError`` it wraps, :func:`atomic_files` and the commands report it in one line.
    ``writer``: the ``save_file`` to call (default: ``safetensors.torch.save_file``, looked up now).
    """
    from safetensors import SafetensorError

    if writer is None:
        from safetensors.torch import save_file as writer
    try:
        writer(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        m = _OS_ERROR.search(str(exc))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


# ------------------------------------------------------------------------------------------------------
# Inputs


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, after checking that it is an existing, non-empty regular file."""
    path = Path(path)
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{what} {path} not found") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {reason(exc)}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is not a regular file")
    if st.st_size == 0:
        raise UserError(f"{what} {path} is empty (0 bytes)")
    return path


def file_head(path: Path, what: str, n: int = 8) -> bytes:
    """The first ``n`` bytes of a file."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {reason(exc)}") from exc


_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, KeyError)


def _refuse(path: Path, what: str, exc: BaseException, key: str | None = None) -> UserError:
    where = f"{what} {path}" + (f" (array {key!r})" if key is not None else "")
    if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
        return UserError(f"{where} holds Python objects (pickled data); refused: only plain numeric "
                         f"arrays are loaded, never unpickled")
    return UserError(f"{where} is truncated or corrupt: {reason(exc)}")


class NpzArchive:
    """An open ``.npz``: ``keys``, ``key in archive``, ``archive[key]`` (an ndarray, errors translated)."""

    def __init__(self, data, path: Path, what: str) -> None:
        self._data, self.path, self.what = data, path, what
        self.keys: list[str] = list(data.files)

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            arr = self._data[key]
        except _READ_ERRORS as exc:
            raise _refuse(self.path, self.what, exc, key) from exc
        if not isinstance(arr, np.ndarray):  # a zip member that is not a .npy array
            raise UserError(f"{self.what} {self.path}: member {key!r} is not a NumPy array")
        return arr


@contextlib.contextmanager
def open_npz(path: str | os.PathLike, what: str) -> Iterator[NpzArchive]:
    """Open an ``.npz`` for reading without pickle; every problem is a one-line ``UserError``."""
    path = check_input_file(path, what)
    head = file_head(path, what)
    if not head.startswith(NPZ_MAGIC):
        kind = "a single .npy array" if head.startswith(NPY_MAGIC) else "no zip header"
        raise UserError(f"{what} {path} is not an .npz file ({kind})")
    try:
        data = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise _refuse(path, what, exc) from exc
    with data:
        archive = NpzArchive(data, path, what)
        if not archive.keys:
            raise UserError(f"{what} {path} holds no arrays")
        yield archive


def load_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """Read a ``.npy`` array without pickle; every problem is a one-line ``UserError``."""
    path = check_input_file(path, what)
    if not file_head(path, what).startswith(NPY_MAGIC):
        raise UserError(f"{what} {path} is not a .npy file (no NumPy header)")
    try:
        return np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise _refuse(path, what, exc) from exc


def is_npy(path: Path) -> bool:
    """Whether an existing file starts with the NumPy ``.npy`` magic (False when unreadable)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(NPY_MAGIC)) == NPY_MAGIC
    except OSError:
        return False
