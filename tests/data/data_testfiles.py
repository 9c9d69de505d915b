"""Where the data tests find the real files (/work/shared/data); tests skip when they are absent."""

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("MEANFLOW_TEST_DATA", "/work/shared/data"))


def shared_dir(name: str) -> Path:
    d = SHARED / name
    if not d.is_dir():
        pytest.skip(f"real data folder {d} not available")
    return d
