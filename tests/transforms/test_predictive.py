"""Predictive: prior and posterior predictive samples keyed by address.

Model: w ~ N(0, I_3), y_i ~ N(x_i . w, SIG). Prior predictive moments in closed form:
E[y_i] = 0, E[y_i^2] = |x_i|^2 + SIG^2; checked with the suite's statistics helpers (a
negative control without the noise term must fail). The posterior predictive from a guide at
hand-set parameters has E[w] = loc and E[y_i] = x_i . loc.
"""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl.transforms import AutoNormal, Predictive

from .._stats import assert_biased, assert_unbiased, power_limit

SIG = 0.7
X = jnp.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4], [0.0, 0.3, 1.5], [-0.8, 0.1, 0.2]])


def model(x, y=None):
    w = ppl.sample("w", nd.Normal(0.0, 1.0).expand((3,)).to_event(1))
    mu = ppl.deterministic("mu", x @ w)
    with ppl.plate("data", x.shape[0]):
        return ppl.sample("y", nd.Normal(mu, SIG), obs=y)


def test_prior_predictive_shapes_and_moments():
    out = Predictive(model, num_samples=4000)(jax.random.key(0), X)
    assert {k: v.shape for k, v in out.items()} == {"w": (4000, 3), "mu": (4000, 4), "y": (4000, 4)}
    np.testing.assert_allclose(out["mu"], jnp.einsum("nd,sd->sn", X, out["w"]), rtol=1e-5, atol=1e-6)
    y = np.asarray(out["y"], np.float64)
    samples = np.concatenate([y, y ** 2], axis=1)
    exact = np.concatenate([np.zeros(4), np.sum(np.asarray(X) ** 2, 1) + SIG ** 2])
    assert_unbiased(samples, exact, power_limit(exact), "prior predictive moments")
    assert_biased(samples, np.concatenate([np.zeros(4), np.sum(np.asarray(X) ** 2, 1)]), "no noise term")


def test_observed_sites_are_resampled_only_when_none():
    y = jnp.ones(4)
    out = Predictive(model, num_samples=3)(jax.random.key(1), X, y)
    assert set(out) == {"w", "mu"}  # y was observed: not repeated
    with pytest.raises(KeyError, match=r"\['y'\] not produced by the model.*pass None"):
        Predictive(model, num_samples=3, return_sites=["y"])(jax.random.key(1), X, y)
    out = Predictive(model, num_samples=3, return_sites=["y"])(jax.random.key(1), X, None)
    assert list(out) == ["y"] and out["y"].shape == (3, 4)


def test_posterior_predictive_from_a_guide():
    g = AutoNormal(model)
    p = g.init(jax.random.key(0), X, jnp.zeros(4))
    loc = jnp.array([0.5, -1.0, 0.8])
    p = {"loc": {"w": loc}, "scale": {"w": jnp.full(3, -1.5)}}
    out = Predictive(model, guide=g, params=p, num_samples=3000)(jax.random.key(2), X)
    assert out["w"].shape == (3000, 3) and out["y"].shape == (3000, 4)
    samples = np.concatenate([np.asarray(out["w"]), np.asarray(out["y"])], axis=1)
    exact = np.concatenate([np.asarray(loc), np.asarray(X @ loc)])
    assert_unbiased(samples, exact, power_limit(exact), "posterior predictive means")
    assert_biased(samples, np.concatenate([np.zeros(3), np.zeros(4)]), "prior means")
    # the same through guide_args (any guide program) and through posterior samples
    same = Predictive(model, guide=g, guide_args=(p,), num_samples=3000)(jax.random.key(2), X)
    np.testing.assert_array_equal(same["w"], out["w"])
    given = Predictive(model, posterior_samples={"w": out["w"][:5]})(jax.random.key(3), X)
    np.testing.assert_array_equal(given["w"], out["w"][:5])
    np.testing.assert_allclose(given["mu"], out["w"][:5] @ X.T, rtol=1e-5, atol=1e-6)


def test_bad_input_gets_a_clear_error():
    for bad in (0, -3, 2.5, True, None):
        with pytest.raises(ValueError, match="num_samples"):
            Predictive(model, num_samples=bad)
    with pytest.raises(ValueError, match="disagrees with posterior_samples, which hold 5"):
        Predictive(model, posterior_samples={"w": jnp.zeros((5, 3))}, num_samples=4)
    with pytest.raises(ValueError, match="same leading"):
        Predictive(model, posterior_samples={"w": jnp.zeros((5, 3)), "v": jnp.zeros((4,))})
    with pytest.raises(ValueError, match="without a guide"):
        Predictive(model, params={}, num_samples=2)
    with pytest.raises(ValueError, match="needs its parameters"):
        Predictive(model, guide=model, num_samples=2)
    with pytest.raises(TypeError, match="list of addresses"):
        Predictive(model, num_samples=2, return_sites="w")
    with pytest.raises(KeyError, match=r"\['v'\] not produced by the model; it samples or records \['mu', 'w', 'y'\]"):
        Predictive(model, num_samples=2, return_sites=["w", "v"])(jax.random.key(0), X)
