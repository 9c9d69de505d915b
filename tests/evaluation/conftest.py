import os
from pathlib import Path

import pytest

_BESIDE = Path(__file__).resolve().parents[3] / "shared" / "data"
SHARED_WEIGHTS = ((_BESIDE if _BESIDE.is_dir() else Path("/work/shared/data"))
                  / "inception" / "pt_inception-2015-12-05-pool3only-fcNaN.pth")


def inception_weights_path() -> Path | None:
    """The FID Inception weights for tests: $MEANFLOW_INCEPTION_WEIGHTS, else the shared pool3-only file."""
    env = os.environ.get("MEANFLOW_INCEPTION_WEIGHTS")
    for candidate in (env, SHARED_WEIGHTS):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def weights_path() -> Path:
    path = inception_weights_path()
    if path is None:
        pytest.skip("no FID Inception weights file (set MEANFLOW_INCEPTION_WEIGHTS)")
    return path


@pytest.fixture(scope="session")
def inception(weights_path):
    from meanflow.evaluation.inception import load_inception

    return load_inception(weights_path)
