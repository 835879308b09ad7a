"""A NumPyro-masked random choice is still drawn from its distribution: ``.mask(False)`` drops its
density terms, not its draws, so the estimators' score terms use the unmasked density.
(Before, the score function at a fully masked site returned gradient 0 against an exact
2 t, with the plan saying "unbiased".)"""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
from tensorflow_probability.substrates import jax as tfp

import ppl
from ppl.estimators import ARM, LeaveOneOut, ScoreFunction
from ppl.transforms import EstimatorError, expectation

from .._stats import assert_biased, assert_unbiased, estimates, power_limit

N = 4000


def _normal(t, mask):
    return nd.Normal(t, 1.0).expand([2]).mask(mask)


@pytest.mark.parametrize("est", [ScoreFunction(), LeaveOneOut(4)], ids=["score", "loo"])
@pytest.mark.parametrize("mask", [False, "partial"], ids=["masked", "partly"])
def test_score_terms_use_the_unmasked_density(est, mask):
    m = False if mask is False else jnp.array([True, False])

    def f(t):
        z = ppl.sample("z", _normal(t, m), estimator=est)
        return jnp.sum(z ** 2)

    t = jnp.array(0.7)
    E = expectation(f)
    g = estimates(lambda k: E.value_and_grad(k, t)[1], N)
    exact = 2 * 2 * t  # d/dt E[z1^2 + z2^2], z ~ N(t, 1), whatever the mask
    assert_unbiased(g, exact, power_limit(exact, 0.1), f"{type(est).__name__} mask={mask}")


def test_the_trace_score_keeps_the_mask():
    """Density accounting is unchanged: the trace's log density drops the masked elements."""
    tr = ppl.simulate(lambda: ppl.sample("z", _normal(0.3, jnp.array([True, False]))))(jax.random.key(0))
    z = tr.choices["z"]
    np.testing.assert_allclose(tr.score, nd.Normal(0.3, 1.0).log_prob(z[0]), rtol=1e-6)


def test_tfp_masked_site_and_arm_refusal():
    def f(t):
        x = ppl.sample("x", tfp.distributions.Masked(tfp.distributions.Normal(t, 1.0), False),
                       estimator=ScoreFunction())
        return x ** 2

    t = jnp.array(0.4)
    E = expectation(f)
    g = estimates(lambda k: E.value_and_grad(k, t)[1], N)
    # TFP's Masked does not draw masked elements: they take a fixed safe value, so the
    # expectation does not depend on t and the masked (zero) density is the right score
    np.testing.assert_array_equal(np.asarray(g), 0.0)

    def h(t):
        return jnp.sum(ppl.sample("b", nd.Bernoulli(logits=t * jnp.ones(3)).mask(False), estimator=ARM()))

    with pytest.raises(EstimatorError, match="ARM at site 'b'"):
        expectation(h).value_and_grad(jax.random.key(0), t)


def test_negative_control_the_masked_density_as_score_is_biased():
    """What the estimators did before: the masked log density as the score gives 0."""
    def f(t):
        z = ppl.sample("z", nd.Normal(t, 1.0).expand([2]), estimator=ScoreFunction())
        return jnp.sum(z ** 2)

    t = jnp.array(0.7)
    g = estimates(lambda k: expectation(f).value_and_grad(k, t)[1] * 0.0, N)  # a zero score
    assert_biased(g, 2 * 2 * t, "masked score")
