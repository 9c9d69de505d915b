"""Fixtures shared by every test folder."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (restored afterwards): the tiny networks of the tests run
    fastest that way, reproducibly, and a second thread only contends on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
