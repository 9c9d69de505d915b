"""Fixtures shared by the training tests."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every training test runs on one torch thread (see the root conftest)."""
