"""Network registry: names -> factories, used by configs and the CLI.

Names (see docs/design.md): ``"dit"`` (all options as kwargs), the sizes ``"dit-{s,b,m,l,xl}/{2,4,8}"``
(kwargs ``input_size=32, in_channels=4, num_classes=1000``), ``"unet"``, ``"unet-ddpmpp"`` (EDM's
DDPM++ sizes), ``"unet-meanflow"`` (the official MeanFlow CIFAR-10 U-Net), ``"mlp"``, and the
improved-MeanFlow DiT ``"imf-dit"`` (all options as kwargs) with its sizes ``"imf-dit-{b,m,l,xl}/2"``
(kwargs ``input_size=32, in_channels=4, num_classes=1000, guidance_cond=False``), and the pixel-MeanFlow
DiT ``"pmf-dit"`` (all options as kwargs) with its sizes ``"pmf-dit-{b,l,h}/{16,32}"`` (kwargs
``input_size=256 or 512, in_channels=3, num_classes=1000, guidance_cond=False, aux_head_depth=8``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from meanflow.errors import UserError
from meanflow.networks.dit import DIT_SIZES, DiT, dit_factory
from meanflow.networks.imf_dit import IMF_DIT_SIZES, IMFDiT, imf_dit_factory
from meanflow.networks.mlp import MLP
from meanflow.networks.pmf_dit import PMF_DIT_SIZES, PMFDiT, pmf_dit_factory
from meanflow.networks.unet import SongUNet, unet_ddpmpp, unet_meanflow

NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "dit": DiT,
    **{f"dit-{s}/{p}": dit_factory(s, p) for s in DIT_SIZES for p in (2, 4, 8)},
    "unet": SongUNet,
    "unet-ddpmpp": unet_ddpmpp,
    "unet-meanflow": unet_meanflow,
    "mlp": MLP,
    "imf-dit": IMFDiT,
    **{f"imf-dit-{s}/2": imf_dit_factory(s, 2) for s in IMF_DIT_SIZES},
    "pmf-dit": PMFDiT,
    **{f"pmf-dit-{s}/{p}": pmf_dit_factory(s, p) for s in PMF_DIT_SIZES for p in (16, 32)},
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
