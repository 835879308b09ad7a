"""Moved: the suite's statistics are ``tests/_stats.py`` (``from .._stats import ...``), the
estimator fixtures ``tests/estimators/_fixtures.py``. This name re-exports both for tests
written against the old location; it defines nothing of its own."""
from .._stats import *  # noqa: F401,F403
from .._stats import ATOL, N_CHECKS, P_SUITE, Z, mean_se, within  # noqa: F401
from ._fixtures import dual_site, enum_mean, hand_kont  # noqa: F401
