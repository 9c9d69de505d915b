"""Converters from other codes' released checkpoints to meanflow checkpoints.

    obj = read_torch_checkpoint("checkpoint-last.pth")       # no code from the file is run
    conv = convert_py_meanflow(obj, "checkpoint-last.pth")   # official MeanFlow PyTorch (CIFAR-10)
    write_converted(conv, "runs/meanflow-cifar10")           # a run folder, or OUT.safetensors

Formats: ``py-meanflow`` (Gsunshine/py-meanflow, :mod:`meanflow.convert.py_meanflow`). The official
JAX checkpoints (ImageNet, Gsunshine/meanflow) are Flax/Orbax files and are not read here.
"""

from meanflow.convert.output import write_converted
from meanflow.convert.py_meanflow import Converted, convert_py_meanflow
from meanflow.convert.torch_file import read_torch_checkpoint

FORMATS = ("py-meanflow",)
"""Source formats of `meanflow convert --from`."""

__all__ = ["FORMATS", "Converted", "convert_py_meanflow", "read_torch_checkpoint", "write_converted"]
