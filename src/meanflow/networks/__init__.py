"""Backbones sharing one signature: ``net(z, t, h, y=None, tangents=None)``.

See :mod:`meanflow.networks.base` for the tangent mode and docs/design.md for the contract.
"""

from meanflow.networks.base import TangentNet
from meanflow.networks.dit import DiT
from meanflow.networks.imf_dit import IMFDiT
from meanflow.networks.mlp import MLP
from meanflow.networks.pmf_dit import PMFDiT
from meanflow.networks.registry import NETWORKS, build_network
from meanflow.networks.unet import SongUNet

__all__ = ["NETWORKS", "DiT", "IMFDiT", "MLP", "PMFDiT", "SongUNet", "TangentNet", "build_network"]
