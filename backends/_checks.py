"""Hyperparameter checks shared by the backends: a ValueError naming the argument and the fix.

Values that are tracers (e.g. under ``optax.inject_hyperparams``) or schedules (callables)
cannot be checked when the transformation is built and are let through.
"""
from __future__ import annotations

import math

import jax
import numpy as np


def _concrete(value):
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def learning_rate(fn, value):
    v = _concrete(value)
    if v is not None and not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{fn}(learning_rate={value!r}): the learning rate must be a finite number >= 0 "
                         "(optax transformations subtract the step themselves; do not pass a negative rate)")


def in_range(fn, name, value, lo, hi, *, lo_open=False, hi_open=True):
    v = _concrete(value)
    if v is None:
        return
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{fn}({name}={value!r}): must lie in {left}{lo}, {hi}{right}")


def positive_int(fn, name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{fn}({name}={value!r}): must be an integer >= 1")


def positive(where, **values):
    """Each keyword argument a finite number > 0 (a Python or NumPy number, not a tracer)."""
    for name, v in values.items():
        if not (isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{where}: `{name}` must be a finite number > 0, got {v!r}.")
