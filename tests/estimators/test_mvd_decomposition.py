"""MVD's decomposition for every family it supports, one canonical parameter at a time, with
parameters far from 1 (rates 0.3 and 3, scales 0.2 and 5, probabilities near 0 and 1).

With a deterministic continuation ``f``, MVD's tangent in the direction of one parameter
``th`` is ``c (f(x+) - f(x-))`` (plus ``df``, zero here for discrete values), an unbiased
estimate of ``d/dth E[f]``: checked against the closed form of ``E[f]``, differentiated by JAX.
A decomposition wrong by a factor that is 1 at ``th = 1`` (``x + E'`` for ``x + E'/rate``)
hides near 1, hence the parameters. Every family in ``MVD_FAMILIES`` must have a case here.
"""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

from ppl._site import Site
from ppl.distributions import as_dist
from ppl.estimators import MVD, MVD_FAMILIES
from ppl.transforms import DualSite

from .._stats import assert_unbiased, power_limit
from ._fixtures import hand_kont

pytestmark = pytest.mark.statistical
N = 10000


def _normal_mean(loc, scale):  # f(x) = sin x + 0.1 x^2
    return jnp.sin(loc) * jnp.exp(-scale ** 2 / 2) + 0.1 * (loc ** 2 + scale ** 2)


def _exp_mean(rate):  # f(x) = exp(-x) + cos x
    return rate / (rate + 1) + rate ** 2 / (rate ** 2 + 1)


def _poisson_mean(rate):  # f(x) = cos x + 0.5^x
    return jnp.exp(rate * (jnp.cos(1.0) - 1)) * jnp.cos(rate * jnp.sin(1.0)) + jnp.exp(-0.5 * rate)


def _geometric_mean(p):  # failures before the first success; f(x) = 0.5^x + cos x
    q = 1 - p
    re = p * (1 - q * jnp.cos(1.0)) / ((1 - q * jnp.cos(1.0)) ** 2 + (q * jnp.sin(1.0)) ** 2)
    return p / (1 - 0.5 * q) + re


_CAT_F = jnp.array([1.0, -2.0, 0.5, 3.0])
_CAT_W = jnp.array([1.0, 0.0, -1.0, 2.0])


def _bern_mean(t):  # f(x) = 4 (x - 0.3)^2
    return t[0] * 0.49 * 4 + (1 - t[0]) * 0.09 * 4


# family -> (f, make(theta), E[f](theta), [(theta, direction, label)]); theta is a vector so that
# one compilation serves every case of a family
E0, E1 = (1.0, 0.0), (0.0, 1.0)
CASES = {
    "Normal": (lambda x: jnp.sin(x) + 0.1 * x ** 2, lambda t: nd.Normal(t[0], t[1]),
               lambda t: _normal_mean(t[0], t[1]),
               [((0.7, 0.2), E0, "loc, scale 0.2"), ((0.7, 5.0), E0, "loc, scale 5"),
                ((0.7, 0.2), E1, "scale 0.2"), ((0.7, 5.0), E1, "scale 5")]),
    "Exponential": (lambda x: jnp.exp(-x) + jnp.cos(x), lambda t: nd.Exponential(t[0]), lambda t: _exp_mean(t[0]),
                    [((0.3,), (1.0,), "rate 0.3"), ((3.0,), (1.0,), "rate 3")]),
    "Poisson": (lambda x: jnp.cos(x.astype(jnp.float32)) + 0.5 ** x.astype(jnp.float32),
                lambda t: nd.Poisson(t[0]), lambda t: _poisson_mean(t[0]),
                [((0.3,), (1.0,), "rate 0.3"), ((3.0,), (1.0,), "rate 3")]),
    "Geometric": (lambda x: 0.5 ** x.astype(jnp.float32) + jnp.cos(x.astype(jnp.float32)),
                  lambda t: nd.Geometric(probs=t[0]), lambda t: _geometric_mean(t[0]),
                  [((0.15,), (1.0,), "probs 0.15"), ((0.8,), (1.0,), "probs 0.8")]),
    "Bernoulli": (lambda x: (x.astype(jnp.float32) - 0.3) ** 2 * 4.0, lambda t: nd.Bernoulli(probs=t[0]), _bern_mean,
                  [((0.1,), (1.0,), "probs 0.1"), ((0.9,), (1.0,), "probs 0.9")]),
    "Categorical": (lambda x: _CAT_F[x], lambda t: nd.Categorical(logits=t[0] * _CAT_W),
                    lambda t: jnp.dot(jax.nn.softmax(t[0] * _CAT_W), _CAT_F),
                    [((1.5,), (1.0,), "logits 1.5 x (1, 0, -1, 2)"), ((-2.0,), (1.0,), "logits -2 x (1, 0, -1, 2)")]),
}


def _tangents(family, n):
    """``n`` MVD tangents for ``(theta, direction)``: one compilation per family."""
    f, make, _, _ = CASES[family]
    kont = hand_kont(f, noise=0.0)

    def one(key, theta, v):
        d = make(theta)
        leaves, treedef = jax.tree_util.tree_flatten(d)
        _, tans = jax.jvp(lambda t: [jnp.asarray(x) for x in jax.tree_util.tree_leaves(make(t))], (theta,), (v,))
        out = jax.eval_shape(lambda: as_dist(d).sample(jax.random.key(0)))
        site = Site(addr=("x",), treedef=treedef, leaves=tuple(leaves), shape=tuple(out.shape), dtype=np.dtype(out.dtype))
        return MVD().jvp(key, DualSite(site, tans), kont)[1][0]

    run = jax.jit(jax.vmap(one, (0, None, None)))
    return lambda theta, v, seed: run(jax.random.split(jax.random.key(seed), n), jnp.asarray(theta, jnp.float32),
                                      jnp.asarray(v, jnp.float32))


def test_every_mvd_family_has_a_case():
    assert set(CASES) == set(MVD_FAMILIES)


@pytest.mark.parametrize("family", list(CASES))
def test_decomposition_matches_the_closed_form_derivative(family):
    _, _, mean, cases = CASES[family]
    tangents = _tangents(family, N)
    for seed, (theta, v, label) in enumerate(cases):
        exact = float(jax.grad(mean)(jnp.asarray(theta, jnp.float32)) @ jnp.asarray(v))
        assert_unbiased(tangents(theta, v, seed), exact, power_limit(exact), f"MVD {family} {label}")
