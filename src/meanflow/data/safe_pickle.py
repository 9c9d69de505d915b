"""A restricted unpickler for the CIFAR-10 python batches.

Plain ``pickle.load`` runs whatever callables a file names, so a tampered batch could execute
code. The batches only need a dict of lists, strings and one numpy uint8 array, so this
unpickler resolves exactly the globals that rebuild numpy arrays and rejects every other one.
Callers should still verify the file's md5 first; this is the second line of defence.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes under protocol 2 as _codecs.encode(str, "latin1"); allow only that codec.
    if not isinstance(obj, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin1", errors)


# (module, name) -> object. Both numpy spellings: Python 2 / numpy 1 files say numpy.core.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` returns only numpy array-rebuilding globals."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (Python 2 strings decoded as latin-1).

    Raises:
        pickle.UnpicklingError: the pickle names a forbidden global or is malformed.
    """
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
