"""Gradient estimators for ADEV, one strategy per random choice (see README.md here).

Choose them by object, at the site (``ppl.sample(addr, d, estimator=Enum())``) or in the
objective (``expectation(f, estimators={"z": Enum(), "x": MVD()})``); ``E.plan(*args)``
prints the result. Each class's docstring states its identity, preconditions and variance.
"""
from ppl.transforms import DualSite, Estimator, EstimatorError
from ppl.transforms._estimator import estimator_dataclass, static

from .arm import ARM, DisARM
from .baseline import Baseline, EMABaseline, baseline_loss
from .enum import Enum
from .loo import LeaveOneOut
from .mvd import MVD, MVD_FAMILIES
from .relax import GumbelSoftmax, StraightThrough
from .reparam import Reparam
from .score import ScoreFunction

__all__ = ["Estimator", "DualSite", "EstimatorError", "Reparam", "ScoreFunction", "Baseline",
           "EMABaseline", "baseline_loss", "LeaveOneOut", "Enum", "MVD", "MVD_FAMILIES", "ARM",
           "DisARM", "GumbelSoftmax", "StraightThrough", "estimator_dataclass", "static"]
