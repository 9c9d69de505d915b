"""Training objectives and samplers. A method holds hyper-parameters only, never weights.

Every method has ``loss(net, x, y=None, *, noise=None, t=None, r=None) -> LossOutput`` and
``sample(net, noise, y=None, steps=1, schedule=None) -> Tensor``.
"""

from meanflow.methods.base import CONTEXT_KEYS, LossOutput, Method, Progress
from meanflow.methods.flow_matching import FlowMatching
from meanflow.methods.jvp import jvp, supports_tangents
from meanflow.methods.meanflow import MeanFlow
from meanflow.methods.registry import METHODS, build_method
from meanflow.methods.time_sampling import sample_t_r, sample_time, uniform_schedule

__all__ = [
    "CONTEXT_KEYS",
    "METHODS",
    "FlowMatching",
    "LossOutput",
    "MeanFlow",
    "Method",
    "Progress",
    "build_method",
    "jvp",
    "sample_t_r",
    "sample_time",
    "supports_tangents",
    "uniform_schedule",
]
