"""Shared fixtures for the data tests: the real files in /work/shared/data (skipped when absent)."""

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("MEANFLOW_TEST_DATA", "/work/shared/data"))


def shared_dir(name: str) -> Path:
    d = SHARED / name
    if not d.is_dir():
        pytest.skip(f"real data folder {d} not available")
    return d


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # No test may read from or write to the user's real cache.
    monkeypatch.setenv("MEANFLOW_CACHE", str(tmp_path / "cache"))
