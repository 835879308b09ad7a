"""The VI constructs and objectives that had no test of their own, each against an exact
reference: ``sivi``, ``rws_wake_p``, ``rws_wake_q`` and the gradient through ``SIR`` by
enumeration of every discrete choice (Enum on every site makes ADEV's estimate exact; the
default score-function estimators are checked statistically), ``Marginal.density`` against the
closed-form marginal of a Gaussian auxiliary-variable guide."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
from jax.flatten_util import ravel_pytree
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm

import ppl
from ppl.estimators import Enum
from ppl.transforms import expectation
from ppl.transforms import objectives as O
from ppl.transforms.vi import SIR, Marginal, density
from .._stats import assert_biased, assert_unbiased, estimates

ENUM = Enum(batch_size=64)  # every value's continuation in one vmap: the cheapest to compile here

# --- a small discrete model with a parameter, and discrete guides --------------------------------

MEANS = jnp.array([-1.0, 0.5, 2.0])
Y = 0.9
THETA = jnp.array([0.3, -0.4, 0.1])          # model logits
PHI = jnp.array([-0.2, 0.6, 0.1])            # guide logits
PHI_AUX = {"a": jnp.array(0.4), "l": jnp.array([[1.0, -0.5, 0.2], [-0.7, 0.3, 0.9]])}


def model(theta, y):
    z = ppl.sample("z", nd.Categorical(logits=theta))
    ppl.sample("y", nd.Normal(MEANS[z], 0.8), obs=y)


def guide(phi):
    ppl.sample("z", nd.Categorical(logits=phi))


def log_joint(theta, z):
    return jax.nn.log_softmax(theta)[z] + norm.logpdf(Y, MEANS[z], 0.8)


def log_q(phi, z):
    return jax.nn.log_softmax(phi)[z]


def _tuples(k, n=3):
    return jnp.array(list(itertools.product(range(n), repeat=k)))


def exact_iwae(theta, phi, k):
    """IWAE(k) by enumerating every k-tuple of guide draws."""
    zs = _tuples(k)
    lq = log_q(phi, zs)                                   # (3^k, k)
    lw = log_joint(theta, zs) - lq
    return jnp.sum(jnp.exp(jnp.sum(lq, 1)) * (logsumexp(lw, 1) - jnp.log(k)))


def _flat(g):
    return ravel_pytree(g)[0]


def _grads(objective, estimators=None):
    E = expectation(objective, estimators=estimators)
    return lambda key: _flat(E.grad(key, (THETA, Y), (PHI,), argnums=(0, 1)))


# --- SIR --------------------------------------------------------------------------------------


def _sir_elbo(n):
    def objective(model_args, guide_args):
        x, lq = SIR(model, guide, n).sample(model_args, guide_args)
        return density(model, x, *model_args) - lq
    return objective


def _exact_iwae_grad(k):
    gt, gp = jax.grad(exact_iwae, argnums=(0, 1))(THETA, PHI, k)
    return np.concatenate([gt, np.zeros(1), gp])  # (theta, y, phi): y gets no gradient here


def test_sir_gradient_is_the_iwae_gradient_by_enumeration():
    """SIR(n) as the guide of an ELBO: the value is IWAE(n); with Enum at the particles the
    gradient (model and guide parameters) is exact, whatever resampling index is drawn."""
    E = expectation(_sir_elbo(3), estimators={"z": ENUM})
    f = jax.jit(lambda key: E.value_and_grad(key, (THETA, Y), (PHI,), argnums=(0, 1)))
    exact = _exact_iwae_grad(3)
    for seed in range(3):
        v, g = f(jax.random.key(seed))
        np.testing.assert_allclose(v, exact_iwae(THETA, PHI, 3), rtol=1e-5)
        np.testing.assert_allclose(np.concatenate([g[0][0], np.zeros(1), g[1][0]]), exact, rtol=2e-4, atol=2e-6)


def _no_y(g):
    return np.concatenate([g[:3], g[4:]])  # drop the observation's slot


@pytest.mark.slow
def test_sir_gradient_with_score_function_particles_is_unbiased():
    """Slow (a 4000-draw statistical check of a case the enumeration test covers exactly)."""
    out = estimates(lambda k: _grads(_sir_elbo(3))(k), 4000, seed=5)
    exact = _exact_iwae_grad(3)
    assert_unbiased(_no_y(np.asarray(out).T).T, _no_y(exact), 0.05, "SIR-ELBO gradient (score function)")


# --- reweighted wake-sleep -----------------------------------------------------------------------


def exact_wake_p_grad(k):
    """E_{z_1..z_k ~ q} sum_k w~_k d/dtheta log p(z_k, y), the weights held fixed."""
    zs = _tuples(k)
    lq = log_q(PHI, zs)
    wt = jax.nn.softmax(log_joint(THETA, zs) - lq, axis=1)
    return jax.grad(lambda t: jnp.sum(jnp.exp(jnp.sum(lq, 1)) * jnp.sum(wt * log_joint(t, zs), 1)))(THETA)


def exact_wake_q_grad(k):
    """E_{z_1..z_k ~ q} sum_k w~_k d/dphi log q(z_k), the draws and weights held fixed."""
    zs = _tuples(k)
    lq = log_q(PHI, zs)
    wt = jax.nn.softmax(log_joint(THETA, zs) - lq, axis=1)
    return jax.grad(lambda p: jnp.sum(jnp.exp(jnp.sum(lq, 1)) * jnp.sum(wt * log_q(p, zs), 1)))(PHI)


@pytest.mark.parametrize("k", [pytest.param(1, marks=pytest.mark.slow), 3])
def test_rws_wake_p_and_wake_q_gradients_by_enumeration(k):
    """Enum at the particles: wake-p's gradient is exactly the expected self-normalized
    estimate of d log p(y) in theta (and nothing in phi); wake-q's is the expected
    sum_k w~_k d log q(z_k) in phi (and nothing in theta). K = 1 wake-p is E_q d log p(z, y)."""
    for obj, exact, who in [(O.rws_wake_p(model, guide, k), exact_wake_p_grad(k), "p"),
                            (O.rws_wake_q(model, guide, k), exact_wake_q_grad(k), "q")]:
        E = expectation(obj, estimators={"z": ENUM})
        g = jax.jit(lambda key: E.grad(key, (THETA, Y), (PHI,), argnums=(0, 1)))(jax.random.key(0))
        g_theta, g_phi = g[0][0], g[1][0]
        np.testing.assert_allclose(g_theta if who == "p" else g_phi, exact, rtol=2e-4, atol=2e-6)
        np.testing.assert_allclose(g_phi if who == "p" else g_theta, 0.0, atol=1e-7)


def test_rws_wake_p_with_sampled_particles_is_unbiased_for_its_expectation():
    """With the default estimator the particles are plain draws (the guide is stopped): the
    gradient averages to the enumerated expectation; it is not the gradient of log p(y) at
    K = 3 (the self-normalized estimate is biased), which the negative control shows."""
    E = expectation(O.rws_wake_p(model, guide, 3))
    out = estimates(lambda key: E.grad(key, (THETA, Y), (PHI,), argnums=0)[0], 4000, seed=6)
    assert_unbiased(out, exact_wake_p_grad(3), 0.02, "wake-p gradient")
    log_evidence = lambda t: logsumexp(log_joint(t, jnp.arange(3)))
    assert_biased(out, jax.grad(log_evidence)(THETA), "wake-p against d log p(y) at K = 3")


# --- SIVI ----------------------------------------------------------------------------------------


def aux_guide(phi):
    u = ppl.sample("u", nd.Bernoulli(logits=phi["a"]))
    ppl.sample("z", nd.Categorical(logits=phi["l"][u]))


def mixing_prior(x, phi):
    ppl.sample("u", nd.Bernoulli(logits=phi["a"]))


def exact_sivi(theta, phi, m):
    """E over u_0..u_m ~ pi (iid) and z ~ q(z | u_0) of log p(z, y) - log (1/(m+1)) sum_j q(z | u_j)."""
    us = _tuples(m + 1, 2)                                               # (2^(m+1), m+1)
    pi = jnp.where(us == 1, jax.nn.sigmoid(phi["a"]), jax.nn.sigmoid(-phi["a"]))
    w_u = jnp.prod(pi, 1)
    lq_zu = jax.nn.log_softmax(phi["l"], -1)                             # (2, 3): log q(z | u)
    total = 0.0
    for z in range(3):
        inner = log_joint(theta, z) - (logsumexp(lq_zu[us, z], 1) - jnp.log(m + 1.0))
        total = total + jnp.sum(w_u * jnp.exp(lq_zu[us[:, 0], z]) * inner)
    return total


@pytest.mark.parametrize("m", [pytest.param(0, marks=pytest.mark.slow), 2])
def test_sivi_value_and_gradient_by_enumeration(m):
    obj = O.sivi(model, aux_guide, ["z"], mixing_prior, m)
    E = expectation(obj, estimators={"u": ENUM, "z": ENUM})
    v, g = jax.jit(lambda key: E.value_and_grad(key, (THETA, Y), (PHI_AUX,), argnums=(0, 1)))(jax.random.key(0))
    exact = jax.jit(jax.value_and_grad(exact_sivi, argnums=(0, 1)), static_argnums=2)
    ev, (gt, gp) = exact(THETA, PHI_AUX, m)
    np.testing.assert_allclose(v, ev, rtol=1e-5)
    np.testing.assert_allclose(g[0][0], gt, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(_flat(g[1][0]), _flat(gp), rtol=2e-4, atol=2e-6)


def test_sivi_bound_rises_with_m_toward_the_marginal_elbo():
    """SIVI(m) <= ELBO of the exact marginal guide, and rises with m (exact values)."""
    lq_zu = jax.nn.log_softmax(PHI_AUX["l"], -1)
    pi = jnp.array([jax.nn.sigmoid(-PHI_AUX["a"]), jax.nn.sigmoid(PHI_AUX["a"])])
    log_marg = logsumexp(jnp.log(pi)[:, None] + lq_zu, 0)
    elbo_marg = jnp.sum(jnp.exp(log_marg) * (log_joint(THETA, jnp.arange(3)) - log_marg))
    vals = [float(jax.jit(exact_sivi, static_argnums=2)(THETA, PHI_AUX, m)) for m in (0, 1, 4)]
    assert vals[0] < vals[1] < vals[2] < float(elbo_marg)


# --- Marginal.density -------------------------------------------------------------------------------


def gauss_aux(phi):
    u = ppl.sample("u", nd.Normal(phi[0], 0.4))
    ppl.sample("x", nd.Normal(u, jax.nn.softplus(phi[1])))


def gauss_reverse(x, phi):
    ppl.sample("u", nd.Normal(0.3 * x["x"] + 0.7 * phi[0], 0.5))


PHI_G = jnp.array([0.4, -0.3])
X0 = 0.9


def exact_marginal(phi):
    """q(x) = N(x; a, sqrt(0.4^2 + softplus(s)^2))."""
    return jnp.exp(norm.logpdf(X0, phi[0], jnp.sqrt(0.16 + jax.nn.softplus(phi[1]) ** 2)))


@pytest.mark.parametrize("m", [pytest.param(1, marks=pytest.mark.slow), 4])
def test_marginal_density_is_unbiased_for_the_density_and_its_gradient(m):
    """exp(Marginal.density) is unbiased for q(x), and ADEV's gradient of it for dq/dphi; its log
    is biased for log q(x) (Jensen), the negative control."""
    marg = Marginal(gauss_aux, ("x",), gauss_reverse, m)
    E = expectation(lambda phi: jnp.exp(marg.density({"x": X0}, phi)))
    out = estimates(lambda k: E.value_and_grad(k, PHI_G), 4000, seed=7 + m)
    vals, grads = np.asarray(out[0]), np.asarray(out[1])
    q = float(exact_marginal(PHI_G))
    assert_unbiased(vals, q, 0.02 * q, f"Marginal.density m={m}: q(x)")
    assert_unbiased(grads, jax.grad(exact_marginal)(PHI_G), 0.02 * q, f"Marginal.density m={m}: dq/dphi")
    assert_biased(np.log(vals), np.log(q), f"log of Marginal.density m={m} against log q(x)")
