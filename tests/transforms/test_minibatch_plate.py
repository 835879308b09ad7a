"""Minibatches with ppl.plate on Bayesian linear regression with known noise (conjugate).

The design has orthogonal columns, so the exact posterior is a product of independent Normals
(precision diag(1/prior^2 + X'X/sigma^2)), which a mean-field Normal guide can match exactly.

- The minibatch ELBO (likelihood inside ``plate("data", N, subsample_size=B)``) and its
  gradient, over random minibatches and guide draws, are unbiased for the full-data ELBO
  (closed form), with the suite's statistics helpers; without the plate the same check fails.
- ``fit`` with minibatches of 32 inside the plate recovers the exact posterior mean and sd;
  without the plate the sd comes out sqrt(N/B) too wide and fit warns, once, with the fix.
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import optax
import pytest

import ppl
from ppl.transforms import expectation
from ppl.transforms.fit import UnscaledMinibatchWarning, fit
from ppl.transforms.objectives import elbo

from .._stats import assert_biased, assert_unbiased, estimates, power_limit

N, B, D, SIG, PRIOR = 256, 32, 3, 0.5, 1.0
_rng = np.random.default_rng(0)
_Q, _ = np.linalg.qr(_rng.normal(size=(N, D)))
X = jnp.asarray(_Q * np.sqrt(N) * np.array([1.0, 0.5, 0.25]), jnp.float32)
Y = jnp.asarray(np.asarray(X) @ np.array([0.8, -0.4, 1.2]) + SIG * _rng.normal(size=N), jnp.float32)
_XtX = np.asarray(X, np.float64).T @ np.asarray(X, np.float64)
assert np.allclose(_XtX - np.diag(np.diag(_XtX)), 0.0, atol=1e-3)  # the exact posterior is diagonal
PREC = 1 / PRIOR ** 2 + np.diag(_XtX) / SIG ** 2
POST_SD = 1 / np.sqrt(PREC)
POST_MEAN = (np.asarray(X, np.float64).T @ np.asarray(Y, np.float64) / SIG ** 2) / PREC


def model(x, y):
    w = ppl.sample("w", nd.Normal(0.0, PRIOR).expand((D,)).to_event(1))
    with ppl.plate("data", N, subsample_size=x.shape[0]):
        ppl.sample("y", nd.Normal(x @ w, SIG), obs=y)


def model_unplated(x, y):
    w = ppl.sample("w", nd.Normal(0.0, PRIOR).expand((D,)).to_event(1))
    ppl.sample("y", nd.Normal(x @ w, SIG), obs=y)


def guide(phi):
    ppl.sample("w", nd.Normal(phi["m"], jax.nn.softplus(phi["s"])).to_event(1))


E = expectation(elbo(model, guide))
E_UNPLATED = expectation(elbo(model_unplated, guide))
PHI = {"m": jnp.array([0.5, -0.1, 0.9]), "s": jnp.array([-2.5, -2.0, -1.5])}


def full_elbo(phi):
    """The full-data ELBO in closed form (float64 numpy-free jnp, differentiable)."""
    m, s = phi["m"], jax.nn.softplus(phi["s"])
    lik = (-0.5 * N * jnp.log(2 * jnp.pi * SIG ** 2)
           - (jnp.sum((Y - X @ m) ** 2) + jnp.sum((X ** 2) @ (s ** 2))) / (2 * SIG ** 2))
    prior = -0.5 * D * jnp.log(2 * jnp.pi * PRIOR ** 2) - jnp.sum(m ** 2 + s ** 2) / (2 * PRIOR ** 2)
    entropy = jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e * s ** 2))
    return lik + prior + entropy


def _minibatch_estimates(E_, n=2000):
    def one(key):
        k1, k2 = jax.random.split(key)
        idx = jax.random.choice(k1, N, (B,), replace=False)
        v, g = E_.value_and_grad(k2, (X[idx], Y[idx]), (PHI,), argnums=1)
        return jnp.concatenate([v[None], g[0]["m"], g[0]["s"]])

    return np.asarray(estimates(one, n, seed=3))


def test_minibatch_elbo_is_unbiased_for_the_full_data_elbo():
    v, g = jax.value_and_grad(full_elbo)(PHI)
    exact = np.concatenate([[v], g["m"], g["s"]])
    samples = _minibatch_estimates(E)
    scale = np.abs(exact) + 1.0  # compare relative to each component's size
    assert_unbiased(samples / scale, exact / scale, power_limit(exact / scale), "minibatch ELBO, plate")
    assert_biased(_minibatch_estimates(E_UNPLATED) / scale, exact / scale, "minibatch ELBO, no plate")


def _fit(E_, seed=0, steps=1000):
    loss = lambda k, p, b: -jnp.mean(jax.vmap(lambda kk: E_.estimate(kk, b, (p,)))(jax.random.split(k, 8)))
    phi0 = {"m": jnp.zeros(D), "s": jnp.full(D, -2.0)}
    opt = optax.adam(optax.exponential_decay(0.05, steps, 0.02))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = fit(loss, opt, phi0, key=jax.random.key(seed), num_steps=steps, data=(X, Y), batch_size=B,
                chunk=steps)
    mine = [w for w in caught if issubclass(w.category, UnscaledMinibatchWarning)]
    return np.asarray(r.params["m"]), np.asarray(jax.nn.softplus(r.params["s"])), mine


def test_fit_with_minibatches_in_a_plate_matches_the_exact_posterior():
    """Tolerances: over seeds 0-2 the fitted mean is within 0.06 posterior sd and the sd within
    4% (1000 steps, 8 guide draws per step, Adam with the step size decayed 50x); the bars are
    ~3x that.
    The negative control is off by sqrt(N / B) = 2.8x in sd."""
    m, s, warned = _fit(E)
    assert not warned
    np.testing.assert_array_less(np.abs(m - POST_MEAN) / POST_SD, 0.15)
    np.testing.assert_array_less(np.abs(s / POST_SD - 1.0), 0.12)

    m, s, warned = _fit(E_UNPLATED, steps=300)
    assert len(warned) == 1, "fit warns once per run"
    msg = str(warned[0].message)
    assert "'y'" in msg and "ppl.plate('data', 256, subsample_size=32)" in msg and "'w'" in msg
    assert np.all(s / POST_SD > 2.0), s / POST_SD  # the silent failure the warning is about


def test_no_warning_without_minibatches_or_for_local_latents():
    # full batch: nothing to scale
    loss = lambda k, p, b: -E_UNPLATED.estimate(k, b, (p,))
    phi0 = {"m": jnp.zeros(D), "s": jnp.full(D, -2.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnscaledMinibatchWarning)
        fit(loss, optax.adam(1e-2), phi0, key=jax.random.key(0), num_steps=2, data=(X, Y), batch_size=N)

        # a VAE-like program: only per-example latents, the minibatch sum is a fine objective
        def local_model(x):
            z = ppl.sample("z", nd.Normal(0.0, 1.0).expand((x.shape[0],)).to_event(1))
            ppl.sample("x", nd.Normal(z, 1.0).to_event(1), obs=x)

        def local_guide(x, a):
            ppl.sample("z", nd.Normal(a * x, 1.0).to_event(1))

        E_local = expectation(elbo(local_model, local_guide))
        fit(lambda k, a, b: -E_local.estimate(k, (b,), (b, a)), optax.adam(1e-2), jnp.zeros(()),
            key=jax.random.key(0), num_steps=2, data=Y, batch_size=B)


# --- local latents inside the plate, estimated by the score function -----------------------

NL, BL, SL = 16, 4, 0.6
YL = jnp.asarray(np.random.default_rng(1).normal(size=NL) * 1.5, jnp.float32)


def local_model(y):
    with ppl.plate("data", NL, subsample_size=y.shape[0]):
        z = ppl.sample("z", nd.Normal(0.0, 1.0).expand(y.shape))
        ppl.sample("y", nd.Normal(z, SL), obs=y)


def local_guide(y, theta, plated=True):
    a, b, c = theta
    d = nd.Normal(a * y + b, jax.nn.softplus(c))
    if plated:
        with ppl.plate("data", NL, subsample_size=y.shape[0]):
            ppl.sample("z", d)
    else:
        ppl.sample("z", d)


THETA = jnp.array([0.5, 0.2, -0.3])


def local_full_elbo(theta):
    a, b, c = theta
    m, s = a * YL + b, jax.nn.softplus(c)
    prior = -0.5 * jnp.log(2 * jnp.pi) - (m ** 2 + s ** 2) / 2
    lik = -0.5 * jnp.log(2 * jnp.pi * SL ** 2) - ((YL - m) ** 2 + s ** 2) / (2 * SL ** 2)
    entropy = 0.5 * jnp.log(2 * jnp.pi * jnp.e * s ** 2)
    return jnp.sum(prior + lik + entropy)


def _local_estimates(plated_guide, baseline, n=4000):
    from ppl.estimators import Baseline, ScoreFunction

    E_ = expectation(lambda y, th: elbo(local_model, lambda yy, t: local_guide(yy, t, plated_guide))((y,), (y, th)),
                     estimators={"z": Baseline(ScoreFunction(), value=baseline)})

    def one(key):
        k1, k2 = jax.random.split(key)
        idx = jax.random.choice(k1, NL, (BL,), replace=False)
        v, g = E_.value_and_grad(k2, YL[idx], THETA, argnums=1)
        return jnp.concatenate([v[None], g])

    return np.asarray(estimates(one, n, seed=5))


def test_score_function_sites_inside_a_plate_enter_the_elbo_scaled():
    """A per-point latent z_i in the plate, in model and guide, with the score function: the
    minibatch ELBO and its gradient are unbiased for the full-data ELBO; a guide whose z is
    outside the plate (log q unscaled) is biased, which the same check detects. The baseline
    is a constant (the full-data ELBO), so the estimator stays unbiased."""
    v, g = jax.value_and_grad(local_full_elbo)(THETA)
    exact = np.concatenate([[v], g])
    scale = np.abs(exact) + 1.0
    assert_unbiased(_local_estimates(True, float(v)) / scale, exact / scale, power_limit(exact / scale),
                    "minibatch ELBO, score function inside the plate")
    assert_biased(_local_estimates(False, float(v)) / scale, exact / scale, "guide outside the plate")


@pytest.mark.slow
def test_adaptive_batch_sizes_warn_too():
    """Slow: two adaptive-batch fits compile per-example gradients (~17 s on 2 shared cores with
    a cold compilation cache)."""
    from ppl.backends.adaptive import AdaptiveBatch

    ctl = AdaptiveBatch(test="norm", eta=0.3, initial=16, maximum=64)
    phi0 = {"m": jnp.zeros(D), "s": jnp.full(D, -2.0)}
    for E_, expect in ((E, 0), (E_UNPLATED, 1)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(lambda k, p, b: -E_.estimate(k, b, (p,)), optax.adam(1e-2), phi0, key=jax.random.key(0),
                num_steps=3, data=(X, Y), batch_size=ctl, chunk=3)
        mine = [w for w in caught if issubclass(w.category, UnscaledMinibatchWarning)]
        assert len(mine) == expect
    assert "subsample_size=x.shape[0]" in str(mine[0].message)
