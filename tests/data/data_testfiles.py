"""Where the tests find the real files: $MEANFLOW_TEST_DATA, else `shared/data` beside the repository
(as in CI's checkout), else /work/shared/data; tests that need them skip when none exists."""

import os
from pathlib import Path

import pytest


def _find_shared() -> Path:
    env = os.environ.get("MEANFLOW_TEST_DATA")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[3] / "shared" / "data"
    return beside if beside.is_dir() else Path("/work/shared/data")


SHARED = _find_shared()


def shared_dir(name: str) -> Path:
    d = SHARED / name
    if not d.is_dir():
        pytest.skip(f"real data folder {d} not available")
    return d
