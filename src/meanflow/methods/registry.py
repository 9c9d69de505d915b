"""Methods by name, for configs and the CLI."""

from __future__ import annotations

import dataclasses

from meanflow.errors import UserError
from meanflow.methods.alphaflow import AlphaFlow
from meanflow.methods.base import Method
from meanflow.methods.consistency_distillation import ConsistencyDistillation
from meanflow.methods.consistency_training import ConsistencyTraining
from meanflow.methods.dmf import DecoupledMeanFlow
from meanflow.methods.flow_matching import FlowMatching
from meanflow.methods.improved_ct import ImprovedConsistencyTraining
from meanflow.methods.improved_meanflow import ImprovedMeanFlow
from meanflow.methods.meanflow import MeanFlow
from meanflow.methods.pmf import PixelMeanFlow
from meanflow.methods.rectified_flow import Distill, Reflow
from meanflow.methods.scd import ContinuousConsistencyDistillation
from meanflow.methods.scm import ContinuousConsistencyTraining
from meanflow.methods.score_sde import ScoreSDE
from meanflow.methods.shortcut import ShortcutModel
from meanflow.methods.soflow import SoFlow
from meanflow.methods.splitmeanflow import SplitMeanFlow

METHODS: dict[str, type[Method]] = {
    "meanflow": MeanFlow,
    "imf": ImprovedMeanFlow,
    "pmf": PixelMeanFlow,
    "alphaflow": AlphaFlow,
    "dmf": DecoupledMeanFlow,
    "soflow": SoFlow,
    "splitmeanflow": SplitMeanFlow,
    "flow_matching": FlowMatching,
    "ct": ConsistencyTraining,
    "ict": ImprovedConsistencyTraining,
    "cd": ConsistencyDistillation,
    "sct": ContinuousConsistencyTraining,
    "scd": ContinuousConsistencyDistillation,
    "shortcut": ShortcutModel,
    "reflow": Reflow,
    "distill": Distill,
    "score_sde": ScoreSDE,
}


def build_method(name: str, **kwargs) -> Method:
    """Build a method by registry name, e.g. ``build_method("meanflow", ratio=0.75, norm_p=0.75)``.

    Raises:
        UserError: Unknown name or unknown/invalid hyper-parameter.
    """
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    cls = METHODS[name]
    known = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    unknown = sorted(k for k in kwargs if known and k not in known)
    if unknown:
        raise UserError(f"method {name!r} has no option {unknown[0]!r} (its options: {', '.join(known)})")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # unexpected keyword
        raise UserError(f"bad options for method {name!r}: {exc}") from None
