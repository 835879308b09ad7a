"""Enum over the joint support of wrapped finite distributions (.to_event, .expand, TFP
Independent): the exact gradient against a hand enumeration, and refusals that name the site."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
from tensorflow_probability.substrates import jax as tfp

import ppl
from ppl.estimators import Enum, EstimatorError
from ppl.transforms import expectation

tfd = tfp.distributions

_W = jnp.array([1.0, -2.0, 0.7])


def _f(x):
    """A non-separable function of three binary elements (so the joint matters)."""
    x = x.astype(jnp.float32)
    return jnp.dot(x, _W) ** 2 + 1.3 * x[0] * x[2]


def _logits(t):
    return jnp.array([0.3, -0.8, 1.1]) * t + jnp.array([0.2, 0.5, -0.4])


def _exact_value(t):
    """E f(b), b_i ~ Bernoulli(sigmoid(l_i(t))) independent: an explicit sum over 2^3 values."""
    p = jax.nn.sigmoid(_logits(t))
    total = 0.0
    for bits in itertools.product([0, 1], repeat=3):
        b = jnp.array(bits)
        total = total + jnp.prod(jnp.where(b == 1, p, 1 - p)) * _f(b)
    return total


_SITES = {
    "numpyro-to_event": lambda t: nd.Bernoulli(logits=_logits(t)).to_event(1),
    "numpyro-expand-to_event": lambda t: nd.Bernoulli(logits=_logits(t)[None, :]).expand((1, 3)).to_event(2),
    "tfp-independent": lambda t: tfd.Independent(tfd.Bernoulli(logits=_logits(t)), 1),
}


@pytest.mark.parametrize("name", list(_SITES))
def test_enum_on_wrapped_bernoulli_gives_the_exact_gradient(name):
    make = _SITES[name]

    def obj(t):
        x = ppl.sample("x", make(t))
        return _f(x.reshape(3))

    t = 0.6
    E = expectation(obj, estimators={"x": Enum()})
    v, g = jax.jit(E.value_and_grad)(jax.random.key(0), t)
    np.testing.assert_allclose(v, _exact_value(t), rtol=1e-5)
    np.testing.assert_allclose(g, jax.grad(_exact_value)(t), rtol=1e-4)
    assert "Enum" in str(E.plan(t))


def test_enum_joint_categorical_to_event_matches_enumeration():
    tab = jnp.array([[0.0, 1.0, -2.0], [3.0, 0.5, 1.0], [-1.0, 2.0, 0.25]])

    def logits(t):
        return jnp.array([[0.1, -0.3, 0.8], [0.6, 0.0, -0.5]]) * t

    def obj(t):
        x = ppl.sample("x", nd.Categorical(logits=logits(t)).to_event(1))
        return tab[x[0], x[1]]

    def exact(t):
        p = jax.nn.softmax(logits(t), -1)
        return jnp.sum(p[0][:, None] * p[1][None, :] * tab)

    v, g = jax.jit(expectation(obj, estimators={"x": Enum()}).value_and_grad)(jax.random.key(1), 1.4)
    np.testing.assert_allclose(v, exact(1.4), rtol=1e-5)
    np.testing.assert_allclose(g, jax.grad(exact)(1.4), rtol=1e-4)


def test_enum_to_event_too_large_names_site_and_fix():
    def obj(t):
        return jnp.sum(ppl.sample("z", nd.Bernoulli(logits=jnp.zeros(13) + t).to_event(1)).astype(jnp.float32))

    with pytest.raises(EstimatorError, match=r"Enum at site 'z'.*13 independent elements.*2\^13 = 8192.*"
                                             r"max_size=4096.*Enum\(max_size=\.\.\.\)"):
        expectation(obj, estimators={"z": Enum()}).plan(0.3)

    def small(t):
        x = ppl.sample("z", nd.Bernoulli(logits=jnp.array([0.5, -1.0, 0.2, 1.5]) + t).to_event(1))
        return jnp.sum(x.astype(jnp.float32))

    with pytest.raises(EstimatorError, match=r"'z'.*2\^4 = 16 values, more than max_size=8"):
        expectation(small, estimators={"z": Enum(max_size=8)}).plan(0.3)
    # raising the documented limit makes it run, exactly
    g = jax.jit(expectation(small, estimators={"z": Enum(max_size=16)}).grad)(jax.random.key(0), 0.3)
    p = jax.nn.sigmoid(jnp.array([0.5, -1.0, 0.2, 1.5]) + 0.3)
    np.testing.assert_allclose(g, jnp.sum(p * (1 - p)), rtol=1e-5)


def test_enum_refuses_a_masked_site_by_name():
    def obj(t):
        d = nd.Bernoulli(logits=jnp.zeros(2) + t).mask(jnp.array([True, False]))
        return jnp.sum(ppl.sample("m", d).astype(jnp.float32))

    with pytest.raises(EstimatorError, match=r"Enum at site 'm'.*masked"):
        expectation(obj, estimators={"m": Enum()}).plan(0.0)


def test_enum_under_vmap_of_a_to_event_site():
    """A .to_event site inside jax.vmap: the vmapped axis and the event axis are both elements."""
    def obj(t):
        x = jax.vmap(lambda s: ppl.sample("x", nd.Bernoulli(logits=jnp.array([s, -s])).to_event(1)))(
            jnp.array([t, 2 * t]))
        return jnp.prod(1.0 + x.astype(jnp.float32) * jnp.array([[1.0, 2.0], [3.0, 4.0]]))

    def exact(t):
        p = jax.nn.sigmoid(jnp.array([[t, -t], [2 * t, -2 * t]]))
        return jnp.prod(1.0 + p * jnp.array([[1.0, 2.0], [3.0, 4.0]]))  # independent factors

    v, g = jax.jit(expectation(obj, estimators={"x": Enum()}).value_and_grad)(jax.random.key(2), 0.7)
    np.testing.assert_allclose(v, exact(0.7), rtol=1e-5)
    np.testing.assert_allclose(g, jax.grad(exact)(0.7), rtol=1e-4)
