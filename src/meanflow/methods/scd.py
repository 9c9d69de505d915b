"""Continuous-time consistency distillation, sCD (Lu & Song, arXiv 2410.11081).

sCT's loss (:mod:`meanflow.methods.scm`) with the path direction taken from a frozen teacher instead of
the conditional velocity: ``ẋ = σ_d F_teacher(x_θ, θ)``, where the teacher is a velocity model of this
project wrapped by the exact TrigFlow change of variables (:func:`meanflow.methods.trigflow.trig_F`).
For a class-conditional teacher, guidance as NVlabs/FastGen (``sCM.py`` l.209-217):

    ẋ = ẋ_c + (w - 1) (ẋ_c - ẋ_∅)      (null label ``num_classes``; ``w = 1``: none),

which is the same combination of the teacher's velocities, since ``F`` is affine in ``v̂`` with a
coefficient that does not depend on the label. The student is best started from the teacher
(``training.init_from``: ``f`` of a flow-matching network is its denoised estimate); the
log-variance head stays freshly initialised then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from meanflow.errors import UserError
from meanflow.methods.scm import ContinuousConsistencyTraining
from meanflow.methods.trigflow import trig_F


@dataclass
class ContinuousConsistencyDistillation(ContinuousConsistencyTraining):
    """sCD: sCT's loss along the teacher's probability-flow ODE (defaults: FastGen's sCM config; its
    ImageNet-64 setting uses ``p_std = 1.6``).

    Attributes (besides sCT's):
        guidance: the teacher's guidance scale w (1: none; needs ``num_classes > 0`` otherwise).
        num_classes: real classes (null id ``num_classes``); 0 = unconditional.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"progress", "teacher"})

    guidance: float = 1.0
    num_classes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.guidance >= 1.0:
            raise UserError(f"guidance must be >= 1, got {self.guidance}")
        if int(self.num_classes) != self.num_classes or self.num_classes < 0:
            raise UserError(f"num_classes must be an integer >= 0, got {self.num_classes}")
        if self.guidance != 1.0 and self.num_classes == 0:
            raise UserError("teacher guidance (guidance != 1) needs a class-conditional run "
                            "(num_classes > 0)")

    @property
    def name(self) -> str:
        return "scd"

    def path_velocity(self, x0: Tensor, z: Tensor, x: Tensor, theta: Tensor, y: Tensor | None,
                      net_kwargs: dict | None, teacher: nn.Module | None) -> Tensor:
        """``ẋ = σ_d F_teacher(x_θ, θ)``, guided (``[B, *S]``, no gradient)."""
        if teacher is None:
            raise UserError("scd needs a teacher network (teacher=...): set training.teacher to a "
                            "flow-matching run")
        sd = self.sigma_data
        dx = sd * trig_F(teacher, x, theta, y, sd, net_kwargs)
        if self.guidance != 1.0 and y is not None:
            null = torch.full_like(y, self.num_classes)
            dx_u = sd * trig_F(teacher, x, theta, null, sd, net_kwargs)
            dx = dx + (self.guidance - 1.0) * (dx - dx_u)
        return dx
