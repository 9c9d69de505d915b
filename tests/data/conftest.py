"""Fixtures shared by the data tests."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # No test may read from or write to the user's real cache.
    monkeypatch.setenv("MEANFLOW_CACHE", str(tmp_path / "cache"))
