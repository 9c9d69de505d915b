"""Training objectives and samplers. A method holds hyper-parameters only, never weights.

Every method has ``loss(net, x, y=None, *, noise=None, t=None, r=None, **context) -> LossOutput`` and
``sample(net, noise, y=None, steps=1, schedule=None, *, generator=None) -> Tensor`` (see ``base``).
Registered names (``METHODS``): meanflow, imf, pmf, alphaflow, dmf, soflow, splitmeanflow, flow_matching, ct,
ict, cd, sct, scd, shortcut, reflow, distill, score_sde.
"""

from meanflow.methods.alphaflow import AlphaFlow
from meanflow.methods.base import CONTEXT_KEYS, LossOutput, Method, Progress
from meanflow.methods.consistency_distillation import ConsistencyDistillation
from meanflow.methods.consistency_training import ConsistencyTraining
from meanflow.methods.dmf import DecoupledMeanFlow
from meanflow.methods.flow_matching import FlowMatching
from meanflow.methods.improved_ct import ImprovedConsistencyTraining
from meanflow.methods.improved_meanflow import ImprovedMeanFlow
from meanflow.methods.jvp import jvp, supports_tangents
from meanflow.methods.meanflow import MeanFlow
from meanflow.methods.pmf import PixelMeanFlow
from meanflow.methods.rectified_flow import Distill, Reflow
from meanflow.methods.registry import METHODS, build_method
from meanflow.methods.scd import ContinuousConsistencyDistillation
from meanflow.methods.scm import ContinuousConsistencyTraining
from meanflow.methods.score_sde import ScoreSDE
from meanflow.methods.shortcut import ShortcutModel
from meanflow.methods.soflow import SoFlow
from meanflow.methods.splitmeanflow import SplitMeanFlow
from meanflow.methods.time_sampling import sample_t_r, sample_time, uniform_schedule

__all__ = [
    "CONTEXT_KEYS",
    "METHODS",
    "AlphaFlow",
    "ConsistencyDistillation",
    "ContinuousConsistencyDistillation",
    "ContinuousConsistencyTraining",
    "ConsistencyTraining",
    "DecoupledMeanFlow",
    "Distill",
    "FlowMatching",
    "ImprovedConsistencyTraining",
    "ImprovedMeanFlow",
    "LossOutput",
    "MeanFlow",
    "Method",
    "PixelMeanFlow",
    "Progress",
    "Reflow",
    "ScoreSDE",
    "ShortcutModel",
    "SoFlow",
    "SplitMeanFlow",
    "build_method",
    "jvp",
    "sample_t_r",
    "sample_time",
    "supports_tangents",
    "uniform_schedule",
]
