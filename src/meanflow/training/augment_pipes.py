"""The augmentation pipes a run can train with (`data.augment`) and the label vector each one gives.

    "edm"       EDM's CIFAR-10 pipe (x/y flips, scale, rotation, anisotropy, translation): 9 labels,
                laid out as in :mod:`meanflow.data.augment`.
    "meanflow"  the official MeanFlow pipe (Gsunshine/py-meanflow): the same pipe without the y-flip
                and the rotation, 6 labels ``[xflip, scale, aniso w cos r, aniso w sin r, tx, ty]``
                (EDM's columns 0, 2, 5, 6, 7, 8), the order its U-Net's ``map_augment`` reads them in.
"""

from __future__ import annotations

from torch import Tensor

from meanflow.data.augment import AUGMENT_DIM, AugmentPipe

MEANFLOW_COLUMNS = (0, 2, 5, 6, 7, 8)
"""Columns of EDM's 9 labels that the official MeanFlow pipe produces, in its order."""

AUGMENT_LABEL_DIMS: dict[str, int] = {"edm": AUGMENT_DIM, "meanflow": len(MEANFLOW_COLUMNS)}
"""Pipe name -> length of its augmentation label vector (the network's ``augment_dim``)."""


class MeanFlowAugment:
    """The official MeanFlow augmentation: EDM's pipe at probability ``p`` with ``yflip = 0`` and
    ``rotate_frac = 0``, returning its 6 labels.

    Call: ``(images [B, C, H, W], generator) -> (augmented [B, C, H, W], labels [B, 6])``.
    """

    def __init__(self, p: float) -> None:
        self.pipe = AugmentPipe(p=p, yflip=0.0, rotate_frac=0.0)

    def __call__(self, images: Tensor, generator=None) -> tuple[Tensor, Tensor]:
        images, labels = self.pipe(images, generator)
        return images, labels[:, list(MEANFLOW_COLUMNS)]


def build_augment_pipe(name: str, p: float):
    """The pipe `name` (a key of :data:`AUGMENT_LABEL_DIMS`) at probability `p`."""
    return MeanFlowAugment(p) if name == "meanflow" else AugmentPipe(p=p)
