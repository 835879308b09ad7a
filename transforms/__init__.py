"""Program transformations: ADEV and the constructs of programmable variational inference."""
from ._estimator import DualSite, Estimator, EstimatorError, Reparam, ScoreFunction
from ._verdict import VerdictError, mark, require_pathwise
from .adev import MAX_UNROLL
from .autoguide import (AutoDelta, AutoGuideError, AutoLowRankMultivariateNormal, AutoMultivariateNormal,
                        AutoNormal, init_to_feasible, init_to_median, init_to_sample, init_to_value)
from .expectation import Expectation, Plan, expectation
from .predictive import Predictive

__all__ = ["expectation", "Expectation", "Plan", "Estimator", "DualSite", "EstimatorError",
           "Reparam", "ScoreFunction", "MAX_UNROLL", "VerdictError", "mark", "require_pathwise",
           "AutoNormal", "AutoDelta", "AutoMultivariateNormal", "AutoLowRankMultivariateNormal",
           "AutoGuideError", "init_to_median", "init_to_sample", "init_to_feasible", "init_to_value",
           "Predictive"]
