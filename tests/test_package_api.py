"""The package root: `import meanflow` stays light, `meanflow.load_generator` is the stable loader."""

import inspect
import subprocess
import sys

import meanflow
from meanflow.training.load import load_generator


def test_import_does_not_load_torch():
    code = "import sys, meanflow; assert callable(meanflow.load_generator); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_load_generator_wraps_the_training_loader():
    assert list(inspect.signature(meanflow.load_generator).parameters) == ["path", "ema", "device"]
    assert inspect.signature(meanflow.load_generator).parameters["ema"].default is None
    assert list(inspect.signature(load_generator).parameters)[:2] == ["path", "ema"]
