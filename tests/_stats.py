"""The suite's statistics for every Monte Carlo check: tolerances from the estimates' own variance.

A check draws ``N`` independent estimates (split fixed keys; :func:`estimates`) and requires,
for every component, ``|mean - exact| <= Z * stderr + ATOL * (1 + |exact|)``:

- ``Z`` is a Bonferroni bound: the whole suite fails spuriously with probability below
  ``P_SUITE`` when it makes at most ``N_CHECKS`` two-sided component checks (it makes a few
  hundred); :func:`z_for` gives the z for another count (the slow gradient fuzzer's).
- ``ATOL`` covers float32 rounding only: a few ulps (``2**-23 ~ 1.2e-7``) accumulated over the
  sums of an estimate, relative to the exact value. It matters for the zero-variance
  estimators (Enum, MVD on separable problems), whose stderr is 0.
- A power guard requires ``stderr <= max_se`` (:func:`power_limit` states the usual one), so
  that a useless high-variance estimator cannot pass.
- A negative control (a deliberately biased estimator) must fail the same check
  (:func:`assert_biased`).

Import it from any test folder: ``from tests._stats import ...``.
"""
import jax
import numpy as np
from jax.scipy.special import ndtri

P_SUITE = 1e-6
N_CHECKS = 1000
ATOL = 2e-5


def z_for(n_checks, p=P_SUITE):
    """Bonferroni: the z at which ``n_checks`` two-sided component checks fail spuriously with
    probability below ``p`` all together."""
    return float(-ndtri(p / (2 * n_checks)))


Z = z_for(N_CHECKS)  # about 6.11


def power_limit(exact, frac=0.06):
    """The power guard's stated maximum stderr: ``frac`` of the largest exact component, plus ``frac``."""
    return frac * (1.0 + float(np.max(np.abs(np.asarray(exact)))))


def mean_se(samples):
    """Sample mean and its standard error along the first axis, in float64."""
    s = np.asarray(samples, np.float64)
    return s.mean(0), s.std(0, ddof=1) / np.sqrt(s.shape[0])


def within(samples, exact, z=Z):
    """Per component: does the sample mean agree with ``exact`` at level ``z``?"""
    mean, se = mean_se(samples)
    exact = np.asarray(exact, np.float64)
    return np.abs(mean - exact) <= z * se + ATOL * (1 + np.abs(exact))


def consistent(samples, exact, z=Z):
    """Whether every component of the sample mean is within ``z`` stderr of ``exact``."""
    return bool(np.all(within(samples, exact, z)))


def assert_unbiased(samples, exact, max_se, what=""):
    mean, se = mean_se(samples)
    assert np.all(se <= max_se), (
        f"{what}: power guard: stderr {se} exceeds the stated maximum {max_se}: too much variance "
        "for this check to mean anything")
    assert consistent(samples, exact), (
        f"{what}: mean {mean} +- {se} differs from exact {np.asarray(exact)} by more than {Z:.2f} stderr")


def assert_biased(samples, exact, what=""):
    """A negative control: the same check must reject these estimates."""
    mean, se = mean_se(samples)
    assert not consistent(samples, exact), (
        f"{what}: negative control passed the unbiasedness check (mean {mean} +- {se}, exact {np.asarray(exact)}): "
        "the check has no power here")


def below(samples, bound, z=Z):
    """One-sided: the sample mean is not significantly above ``bound`` (``mean - z se <= bound``)."""
    mean, se = mean_se(samples)
    return bool(np.all(mean - z * se <= bound))


def estimates(fn, n, seed=0, key=None):
    """``jit(vmap(fn))`` over ``n`` keys split from ``key`` (default ``jax.random.key(seed)``):
    ``fn(key) -> pytree``."""
    key = jax.random.key(seed) if key is None else key
    return jax.jit(jax.vmap(fn))(jax.random.split(key, n))
