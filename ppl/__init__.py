"""ppl: programmable variational inference in JAX.

Programs are plain Python/JAX functions that make addressed random choices with
:func:`sample`. Interpreters (:func:`simulate`, :func:`assess`, :func:`generate`, ...) turn
a program into an ordinary JAX function with explicit PRNG keys. Objectives are programs
too: :mod:`ppl.transforms` turns them into unbiased gradient estimators (ADEV), with the
estimator of each random choice chosen from :mod:`ppl.estimators`.
"""
from ._effects import NumPyroEffectError
from ._interp import UnsupportedControlFlow
from ._plate import PlateError, plate
from ._site import deterministic, sample, validation
from .choicemap import ChoiceMap
from .distributions import Dist, EnumerationError, as_dist
from .interpreters import AddressMismatchError, Trace, assess, call, condition, generate, harvest, importance, replay, simulate

__version__ = "0.1.0"

__all__ = [
    "sample", "deterministic", "call", "plate", "validation",
    "simulate", "assess", "generate", "importance", "replay", "condition", "harvest",
    "Trace", "ChoiceMap", "Dist", "as_dist", "EnumerationError", "UnsupportedControlFlow",
    "NumPyroEffectError", "PlateError", "AddressMismatchError",
]
