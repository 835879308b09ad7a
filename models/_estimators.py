"""Access to ``ppl.estimators`` that degrades with a clear error when a class is missing.

``ppl.estimators`` is written alongside these models; ``estimator("ARM")`` returns the class
from ``ppl.estimators`` (or its private module while the package's ``__init__`` does not
re-export it yet) and raises :class:`EstimatorUnavailable` naming the class otherwise, at the
moment it is asked for, never at import.
"""
from __future__ import annotations

import importlib

__all__ = ["estimator", "EstimatorUnavailable", "available"]

_MODULES = {"Baseline": "baseline", "EMABaseline": "baseline", "Enum": "enum", "LeaveOneOut": "loo",
            "MVD": "mvd", "ARM": "arm", "DisARM": "arm", "GumbelSoftmax": "relax",
            "StraightThrough": "relax", "Reparam": None, "ScoreFunction": None}


class EstimatorUnavailable(ImportError):
    """The estimator class is not (yet) provided by ``ppl.estimators``."""


def estimator(name: str):
    """The estimator class ``name`` (e.g. ``"MVD"``)."""
    if name not in _MODULES:
        raise EstimatorUnavailable(f"unknown estimator class {name!r}; known: {sorted(_MODULES)}")
    if _MODULES[name] is None:
        return getattr(importlib.import_module("ppl.transforms"), name)
    try:
        pkg = importlib.import_module("ppl.estimators")
        if hasattr(pkg, name):
            return getattr(pkg, name)
        return getattr(importlib.import_module(f"ppl.estimators.{_MODULES[name]}"), name)
    except (ImportError, AttributeError) as e:
        raise EstimatorUnavailable(
            f"ppl.estimators.{name} is not available in this installation ({type(e).__name__}: {e}). "
            "Choose another estimator, or update ppl.") from None


def available(names) -> list:
    """The names among ``names`` that :func:`estimator` can provide."""
    out = []
    for n in names:
        try:
            estimator(n)
            out.append(n)
        except EstimatorUnavailable:
            pass
    return out
