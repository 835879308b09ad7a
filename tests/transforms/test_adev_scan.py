"""ADEV through ``lax.scan(..., reverse=True)`` holding random choices: the unrolled loop runs
the iterations last to first, so a carry that depends on the order gets the right gradient.

``c <- 2 c + z_t`` with ``z_t ~ Normal(theta a_t, 1)`` run from ``t = 2`` down to ``0`` gives
``c = z_0 + 2 z_1 + 4 z_2`` (forward order would give ``4 z_0 + 2 z_1 + z_2``); the objective
``c + 0.1 c^2 + sum_t (t + 1) y_t`` with ``y_t = z_t`` also checks that the stacked outputs
keep their index. Exact: ``E[c] = theta S``, ``Var c = 1 + 4 + 16``, ``S = sum_t 2^t a_t``.
"""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl.estimators import Reparam, ScoreFunction
from ppl.transforms import expectation

from .._stats import assert_biased, assert_unbiased, estimates, power_limit

pytestmark = pytest.mark.statistical
A = jnp.array([1.0, -0.5, 2.0])
THETA = 0.3


def objective(theta, reverse=True):
    def body(c, a):
        z = ppl.sample("z", nd.Normal(theta * a, 1.0))
        return 2.0 * c + z, z

    c, ys = jax.lax.scan(body, 0.0, A, reverse=reverse)
    return c + 0.1 * c ** 2 + jnp.sum(jnp.arange(1.0, 4.0) * ys)


def exact_value(theta, reverse=True):
    w = 2.0 ** (jnp.arange(3.0) if reverse else jnp.arange(2.0, -1.0, -1.0))
    m = theta * jnp.sum(w * A)
    return m + 0.1 * (m ** 2 + jnp.sum(w ** 2)) + jnp.sum(jnp.arange(1.0, 4.0) * theta * A)


def test_reverse_scan_value_is_the_reverse_order():
    """With the noise fixed (scale 0) the value is exactly the reverse-order carry."""
    def det(theta):
        def body(c, a):
            return 2.0 * c + ppl.sample("z", nd.Normal(theta * a, 1e-30)), 0.0
        return jax.lax.scan(body, 0.0, A, reverse=True)[0]
    v = expectation(det).estimate(jax.random.key(0), 1.0)
    np.testing.assert_allclose(v, 1.0 * 1 + 2 * -0.5 + 4 * 2.0, rtol=1e-6)


@pytest.mark.parametrize("est", [Reparam(), ScoreFunction()], ids=["pathwise", "score"])
def test_reverse_scan_gradient_unbiased(est):
    E = expectation(objective, estimators={"z": est})
    exact = float(jax.grad(exact_value)(THETA))
    g = estimates(lambda k: E.grad(k, THETA), 8000)
    assert_unbiased(g, exact, power_limit(exact), f"reverse scan, {type(est).__name__}")
    # negative control: the forward-order answer is far from these estimates
    assert_biased(g, float(jax.grad(lambda t: exact_value(t, reverse=False))(THETA)), "forward order")
