"""Program transformations: ADEV and the constructs of programmable variational inference."""
from ._estimator import DualSite, Estimator, EstimatorError, Reparam, ScoreFunction
from ._verdict import VerdictError, mark, require_pathwise
from .adev import MAX_UNROLL
from .expectation import Expectation, Plan, expectation

__all__ = ["expectation", "Expectation", "Plan", "Estimator", "DualSite", "EstimatorError",
           "Reparam", "ScoreFunction", "MAX_UNROLL", "VerdictError", "mark", "require_pathwise"]
