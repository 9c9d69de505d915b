"""Network registry: names -> factories, used by configs and the CLI.

Names (see docs/design.md): ``"dit"`` (all options as kwargs), the sizes ``"dit-{s,b,m,l,xl}/{2,4,8}"``
(kwargs ``input_size=32, in_channels=4, num_classes=1000``), ``"unet"``, ``"unet-ddpmpp"`` (the
paper's CIFAR-10 U-Net) and ``"mlp"``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from meanflow.errors import UserError
from meanflow.networks.dit import DIT_SIZES, DiT, dit_factory
from meanflow.networks.mlp import MLP
from meanflow.networks.unet import SongUNet, unet_ddpmpp

NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "dit": DiT,
    **{f"dit-{s}/{p}": dit_factory(s, p) for s in DIT_SIZES for p in (2, 4, 8)},
    "unet": SongUNet,
    "unet-ddpmpp": unet_ddpmpp,
    "mlp": MLP,
}


def build_network(name: str, **kwargs) -> nn.Module:
    """Build a registered network.

    Args:
        name: a key of :data:`NETWORKS` (case-insensitive), e.g. ``"dit-b/2"``.
        **kwargs: passed to the factory.

    Returns:
        The network (an ``nn.Module`` with ``supports_tangents = True``).

    Raises:
        UserError: unknown name or arguments the factory does not accept.
    """
    key = name.lower()
    if key not in NETWORKS:
        raise UserError(f"unknown network {name!r}; choices: {', '.join(NETWORKS)}")
    factory = NETWORKS[key]
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise UserError(f"bad arguments for network {name!r}: {e}") from e
    return factory(**kwargs)
