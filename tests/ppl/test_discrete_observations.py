"""Float observations at integer-valued sites (Bernoulli, Binomial, Categorical).

Integral floats are accepted and cast to the site's dtype (NumPyro accepts them too); a
concrete non-integral value raises a ValueError naming the site when the program is traced.
"""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl.transforms import expectation
from ppl.transforms import objectives as O

SITES = {
    "bernoulli": (lambda: nd.Bernoulli(probs=jnp.array([0.2, 0.7, 0.5])), [0.0, 1.0, 1.0], 0.5),
    "binomial": (lambda: nd.Binomial(5, probs=jnp.array([0.3, 0.6])), [2.0, 5.0], 2.5),
    "categorical": (lambda: nd.Categorical(probs=jnp.array([[0.1, 0.3, 0.6]] * 2)), [2.0, 0.0], 1.25),
}


@pytest.mark.parametrize("name", sorted(SITES))
def test_integral_float_observations_score_like_integers(name):
    dist, values, _ = SITES[name]

    def model(y):
        ppl.sample("y", dist(), obs=y)

    as_float = ppl.assess(model)({}, jnp.array(values, jnp.float32))[0]
    as_int = ppl.assess(model)({}, jnp.array(values, jnp.int32))[0]
    expected = jnp.sum(dist().log_prob(jnp.array(values, jnp.int32)))
    assert np.isfinite(float(as_float))
    np.testing.assert_allclose(as_float, as_int, rtol=0, atol=0)
    np.testing.assert_allclose(as_float, expected, rtol=1e-6)
    # traced under jit (the value is not concrete): integral floats are cast the same way
    np.testing.assert_allclose(jax.jit(lambda y: ppl.assess(model)({}, y)[0])(jnp.array(values)), expected, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(SITES))
def test_non_integral_observation_names_the_site_at_trace_time(name):
    dist, values, bad = SITES[name]
    y = jnp.array(values).at[0].set(bad)

    def model():
        ppl.sample("pixels", dist(), obs=y)  # a concrete (closed-over) observation

    with pytest.raises(ValueError, match=r"observed value for address 'pixels' has non-integral"):
        jax.eval_shape(lambda: ppl.assess(model)({})[0])
    with pytest.raises(ValueError, match=r"'pixels'.*non-integral"):
        ppl.simulate(model)(jax.random.key(0))
    nan = jnp.array(values).at[0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"'pixels'.*non-finite"):
        ppl.simulate(lambda: ppl.sample("pixels", dist(), obs=nan))(jax.random.key(0))


def test_vae_style_model_observes_binarized_float_images():
    """A user-written Bernoulli VAE: the decoder observes 0./1. float images (binarized with
    x > 0.5, no cast) through ppl.assess and objectives.elbo; the log density equals the one
    with integer images and the ELBO's gradient is finite."""
    rng = np.random.default_rng(0)
    images = (rng.uniform(size=(4, 6)) > 0.5).astype(np.float32)  # floats in {0., 1.}
    w_dec = jnp.asarray(rng.normal(size=(2, 6)), jnp.float32)
    w_enc = jnp.asarray(rng.normal(size=(6, 2)), jnp.float32) * 0.1

    def model(x, w):
        z = ppl.sample("z", nd.Normal(jnp.zeros((4, 2)), 1.0).to_event(2))
        ppl.sample("x", nd.Bernoulli(logits=z @ w).to_event(2), obs=x)

    def guide(x, w):
        ppl.sample("z", nd.Normal(x @ w, 0.5).to_event(2))

    z = jnp.full((4, 2), 0.3)
    lp_float = ppl.assess(model)({"z": z}, jnp.asarray(images), w_dec)[0]
    lp_int = ppl.assess(model)({"z": z}, jnp.asarray(images, jnp.int32), w_dec)[0]
    np.testing.assert_allclose(lp_float, lp_int, rtol=0, atol=0)

    E = expectation(O.elbo(model, guide))
    v, (_, g_w) = jax.jit(lambda k, x: E.value_and_grad(k, (x, w_dec), (x, w_enc), argnums=1))(
        jax.random.key(1), jnp.asarray(images))
    assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(g_w))) and float(jnp.abs(g_w).sum()) > 0

    with pytest.raises(ValueError, match=r"'x'.*non-integral"):  # grey-level images, concrete
        ppl.assess(model)({"z": z}, jnp.asarray(images) * 0.5, w_dec)


def test_traced_non_integral_observation_is_nan_not_truncated():
    """Under jit the value cannot be checked when staged: a non-integral entry makes the
    density NaN (fit stops on it) instead of scoring the truncated value."""
    def model(y):
        ppl.sample("y", nd.Bernoulli(0.3).expand([2]), obs=y)

    f = jax.jit(lambda y: ppl.assess(model)({}, y)[0])
    assert np.isnan(float(f(jnp.array([0.5, 1.0]))))
    assert np.isfinite(float(f(jnp.array([0.0, 1.0]))))
    np.testing.assert_allclose(f(jnp.array([0.0, 1.0])), np.log(0.7) + np.log(0.3), rtol=1e-6)
