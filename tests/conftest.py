"""Fixtures shared by every test folder."""

import os

import pytest
import torch

# Under pytest-xdist (``-n N``, the README's test command) each worker gets an equal share of the cores:
# N workers at the default thread count would oversubscribe a 2-core machine.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (restored afterwards): the tiny networks of the tests run
    fastest that way, reproducibly, and a second thread only contends on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
