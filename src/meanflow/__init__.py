"""meanflow: one-step generative modelling with MeanFlow and its peers.

Convention everywhere: t = 0 is data, t = 1 is noise, z_t = (1 - t) x + t e, v = e - x.

Stable entry point (imported lazily, so `import meanflow` stays light)::

    method, net, cfg = meanflow.load_generator("runs/00000-cifar10-meanflow", ema=0.99995)
    x = method.sample(net, torch.randn(16, *net.meanflow_shape))   # [16, 3, 32, 32] in [-1, 1]
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_generator"]


def load_generator(path, ema: Any = None, device="cpu"):
    """Load a trained or converted generator: ``(method, net, config)``.

    Args:
        path: a run folder (its newest checkpoint) or a ``.safetensors`` checkpoint, as written by
            `meanflow train` or `meanflow convert`.
        ema: None (the run's first EMA decay; raw weights if it has none), a decay such as 0.9999, or
            ``"raw"`` / 0 for the raw weights.
        device: where the network is put.

    Returns:
        ``(method, net, config)``: the method (``method.sample(net, noise)`` generates), the network in
        eval mode with ``meanflow_shape`` / ``meanflow_num_classes`` attributes, and the run's
        ``Config``. See :func:`meanflow.training.load.load_generator`.
    """
    from meanflow.training.load import load_generator as _load

    return _load(path, ema=ema, device=device)
