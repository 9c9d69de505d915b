import pytest
import torch
from cli_testkit import CheapFeatures

from meanflow.cli import evaluate as evaluate_cli


@pytest.fixture(autouse=True)
def _keep_threads():
    """`meanflow train` sets torch's thread count (training.num_threads); restore it after each test."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cheap_model(monkeypatch):
    monkeypatch.setattr(evaluate_cli, "load_feature_model", lambda args: CheapFeatures())
