"""Bounds of inputs that cannot work: seeds beyond what the generators take, sampling step counts whose
schedule alone would not fit, sample or point counts larger than this machine's memory.

Every check raises a one-line :class:`~meanflow.errors.UserError` before anything is allocated or
written. Kept free of torch so that the config can use it.
"""

from __future__ import annotations

import operator
import os

from meanflow.errors import UserError

MAX_SEED = 2**64 - 1
"""Largest seed: torch's generators take seeds in [0, 2^64)."""
MAX_STEPS = 100_000
"""Most sampling steps (the Score SDE reference uses 1000-2000): a schedule of 1e11 steps alone needs
800 GB, and 1e9 network calls per batch never finish."""
MAX_GRID = 65_536
"""Most samples in one training sample grid (`logging.sample_count`): the grid is drawn in one batch;
measure more samples with `meanflow eval`."""


def _integer(value) -> int | None:
    """``value`` as an int if it is an integer (not a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_seed(seed, what: str = "--seed") -> int:
    """``seed`` as an int in [0, 2^64); else a UserError naming ``what``."""
    n = _integer(seed)
    if n is None or not 0 <= n <= MAX_SEED:
        raise UserError(f"{what} must be an integer in [0, 2^64 - 1], got {seed!r}")
    return n


def check_steps(steps, what: str = "--steps") -> int:
    """``steps`` as an int in [1, MAX_STEPS]; else a UserError naming ``what``."""
    n = _integer(steps)
    if n is None or not 1 <= n <= MAX_STEPS:
        raise UserError(f"{what} must be an integer in [1, {MAX_STEPS}], got {steps!r}")
    return n


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} PB"


def check_fits(nbytes: float, what: str, fix: str) -> None:
    """UserError when ``nbytes`` (what ``what`` holds in memory at once) exceed this machine's physical
    memory: "{what} need X of memory, more than this machine's Y: {fix}"."""
    total = physical_memory()
    if total is not None and nbytes > total:
        raise UserError(f"{what} need {_size(nbytes)} of memory, more than this machine's {_size(total)}: "
                        f"{fix}")
