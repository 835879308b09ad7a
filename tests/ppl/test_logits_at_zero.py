"""Densities with logits exactly 0: the gradient is right, bare and inside every wrapper.

NumPyro 0.22's ``BernoulliLogits`` and ``BinomialLogits`` write their log density with
``max(l, 0)`` / ``clip(l, 0)`` and ``exp(-|l|)``, whose derivatives at exactly ``l = 0`` JAX
takes as 0: ``d/dl log p(x)`` comes out ``x`` instead of ``x - n/2``. ``l = 0`` is the common
initialisation, so ppl's adapter corrects it, for the bare distribution and inside every
NumPyro wrapper (``.to_event``, ``.expand``, ``.mask``, mixtures, zero-inflation, ...).
Categorical and Geometric logits, and TFP's families, are right already; they are pinned here.
"""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
from tensorflow_probability.substrates import jax as tfp

import ppl
from ppl.distributions import as_dist
from ppl.estimators import ScoreFunction
from ppl.transforms import expectation

from .._stats import assert_biased, assert_unbiased, estimates

tfd = tfp.distributions

# Each family at logits 0: the distribution, two values (shape (2,) + event), and the exact
# d/dl log p(x) for each element (its logits have shape (2,) + the logits' event part).
N_BINOM = 4
FAMILIES = {
    "bernoulli": (lambda l: nd.Bernoulli(logits=l), jnp.array([1, 0]), lambda x: x - 0.5, ()),
    "binomial": (lambda l: nd.Binomial(N_BINOM, logits=l), jnp.array([3, 0]), lambda x: x - N_BINOM / 2, ()),
    "geometric": (lambda l: nd.Geometric(logits=l), jnp.array([2, 0]), lambda x: 1 - (x + 1) / 2, ()),
    "categorical": (lambda l: nd.Categorical(logits=l), jnp.array([2, 0]),
                    lambda x: jax.nn.one_hot(x, 3) - 1 / 3, (3,)),
    "tfp_bernoulli": (lambda l: tfd.Bernoulli(logits=l), jnp.array([1, 0]), lambda x: x - 0.5, ()),
    "tfp_binomial": (lambda l: tfd.Binomial(float(N_BINOM), logits=l), jnp.array([3.0, 0.0]),
                     lambda x: x - N_BINOM / 2, ()),
    "tfp_categorical": (lambda l: tfd.Categorical(logits=l), jnp.array([2, 0]),
                        lambda x: jax.nn.one_hot(x, 3) - 1 / 3, (3,)),
}


def _numpyro_only(name):
    return not name.startswith("tfp_")


# wrapper name -> (wrap(dist) -> dist, the value for the wrapped site from the (2,) values,
#                  d/dl of the wrapped log density from the per-element exact gradients)
WRAPPERS = {
    "bare": (lambda d: d, lambda x: x, lambda g, x: g),
    "to_event": (lambda d: d.to_event(1), lambda x: x, lambda g, x: g),
    "expand": (lambda d: d.expand((3, 2)), lambda x: jnp.broadcast_to(x, (3, 2)), lambda g, x: 3 * g),
    "expand_to_event": (lambda d: d.expand((3, 2)).to_event(2), lambda x: jnp.broadcast_to(x, (3, 2)),
                        lambda g, x: 3 * g),
    "mask": (lambda d: d.mask(jnp.array([True, False])), lambda x: x, lambda g, x: g * jnp.array([1.0, 0.0]).reshape((2,) + (1,) * (g.ndim - 1))),
    "mask_to_event": (lambda d: d.mask(jnp.array([True, True])).to_event(1), lambda x: x, lambda g, x: g),
    # the mixture of two identical components is the component: a list of children
    "mixture_general": (lambda d: nd.MixtureGeneral(nd.Categorical(probs=jnp.array([0.3, 0.7])), [d, d]),
                        lambda x: x, lambda g, x: g),
    # at values other than 0, log p(x) = log(1 - gate) + log base(x)
    "zero_inflated": (lambda d: nd.ZeroInflatedDistribution(d, gate=0.25), lambda x: x, lambda g, x: g),
}
# TFP's wrappers are its own (Independent, Sample, Masked); they call the inner log_prob.
TFP_WRAPPERS = {
    "bare": (lambda d: d, lambda x: x, lambda g, x: g),
    "independent": (lambda d: tfd.Independent(d, 1), lambda x: x, lambda g, x: g),
    "sample": (lambda d: tfd.Sample(d, 3), lambda x: jnp.broadcast_to(x[..., None], x.shape + (3,)), lambda g, x: 3 * g),
}


DEFECTIVE = ("bernoulli", "binomial")  # NumPyro's own density is wrong at 0 for these


def _cases():
    """The defective families in every wrapper; the others (pinned) bare and in one wrapper."""
    for fam in FAMILIES:
        wrappers = WRAPPERS if _numpyro_only(fam) else TFP_WRAPPERS
        for w in wrappers if fam in DEFECTIVE else list(wrappers)[:2]:
            yield pytest.param(fam, w, id=f"{fam}-{w}")


def _exact_grad(fam, wrapper, x):
    make, _, dlp, ev = FAMILIES[fam]
    g = dlp(x).astype(jnp.float32)  # (2,) + ev
    w = (WRAPPERS if _numpyro_only(fam) else TFP_WRAPPERS)[wrapper]
    return w[2](g, x)


@pytest.mark.parametrize("fam,wrapper", list(_cases()))
def test_density_gradient_at_logits_zero(fam, wrapper):
    """``jax.grad`` of ``ppl.assess`` (and of the adapter's ``log_prob``) at logits 0 is exact."""
    make, x, _, ev = FAMILIES[fam]
    wrap, value_of, _ = (WRAPPERS if _numpyro_only(fam) else TFP_WRAPPERS)[wrapper]
    if wrapper == "zero_inflated":
        x = jnp.where(x == 0, 1, x)
    logits0 = jnp.zeros((2,) + ev)
    value = value_of(x)

    def model(l):
        ppl.sample("x", wrap(make(l)))

    @jax.jit
    def grads(l0, l1):
        g_assess = jax.grad(lambda l: ppl.assess(model)({"x": value}, l)[0])(l0)
        ours = jax.value_and_grad(lambda l: jnp.sum(as_dist(wrap(make(l))).log_prob(value)))(l1)
        theirs = jax.value_and_grad(lambda l: jnp.sum(wrap(make(l)).log_prob(value)))(l1)
        return g_assess, ours, theirs

    # away from 0 the corrected density agrees with the library's own, value and gradient
    l1 = jnp.linspace(-0.7, 1.3, logits0.size).reshape(logits0.shape)
    g_assess, ours, theirs = grads(logits0, l1)
    np.testing.assert_allclose(g_assess, _exact_grad(fam, wrapper, x), atol=1e-6, err_msg=f"{fam} {wrapper}")
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-5, atol=1e-5)


def test_the_user_distribution_is_not_modified():
    d = nd.Bernoulli(logits=jnp.zeros(2)).to_event(1)
    inner = d.base_dist
    as_dist(d).log_prob(jnp.array([1, 0]))
    assert type(d.base_dist) is nd.BernoulliLogits and d.base_dist is inner
    assert as_dist(d).name == "Independent" and as_dist(nd.Bernoulli(logits=0.0)).name == "BernoulliLogits"


def test_infinite_logits_and_values_outside_the_support():
    """The corrected densities stay finite where NumPyro's are (0 * log 0 = 0) and keep -inf
    outside the support."""
    for l, v, want in [(jnp.inf, 1, 0.0), (-jnp.inf, 0, 0.0), (-jnp.inf, 1, -np.inf), (30.0, 0, -30.0)]:
        d = nd.Bernoulli(logits=l, validate_args=False)
        np.testing.assert_allclose(as_dist(d).log_prob(v), want, atol=1e-6)
    np.testing.assert_allclose(as_dist(nd.Binomial(3, logits=jnp.inf, validate_args=False)).log_prob(3), 0.0, atol=1e-5)
    with pytest.warns(UserWarning, match="Out-of-support"):
        assert as_dist(nd.Bernoulli(logits=0.3)).log_prob(2) == -np.inf
    with pytest.warns(UserWarning, match="Out-of-support"):
        assert as_dist(nd.Binomial(3, logits=0.3)).log_prob(4) == -np.inf
    with pytest.warns(UserWarning, match="Out-of-support"):
        assert as_dist(nd.Bernoulli(logits=jnp.zeros(2)).to_event(1)).log_prob(jnp.array([1, 2])) == -np.inf


# --- the score function's gradient at logits 0, against its closed form ------------------
def _score_case(wrapper, family):
    """d/dt E[sum x] at t = 0 for x ~ family(logits = t * c) (two elements, c = (1, -2)),
    bare or inside ``.to_event(1)``; the exact value is ``m sum_i c_i / 4`` (``m`` trials)."""
    c = jnp.array([1.0, -2.0])
    make = {"bernoulli": lambda l: nd.Bernoulli(logits=l), "binomial": lambda l: nd.Binomial(N_BINOM, logits=l)}[family]
    m = 1 if family == "bernoulli" else N_BINOM
    wrap = WRAPPERS[wrapper][0]

    def obj(t):
        return jnp.sum(ppl.sample("x", wrap(make(t * c))).astype(jnp.float32))

    return expectation(obj, estimators={"x": ScoreFunction()}), m * float(jnp.sum(c)) / 4


@pytest.mark.statistical
@pytest.mark.parametrize("family", ["bernoulli", "binomial"])
@pytest.mark.parametrize("wrapper", ["bare", "to_event"])
def test_score_function_gradient_at_logits_zero(wrapper, family):
    E, exact = _score_case(wrapper, family)
    g = estimates(lambda k: E.grad(k, 0.0), 4000)
    assert_unbiased(g, exact, 0.1 * (1 + abs(exact)), f"ScoreFunction at logits 0, {family} {wrapper}")
    # the gradient NumPyro's own density gives (score x instead of x - m/2) is far off
    biased = estimates(lambda k: _numpyro_score(k, family, wrapper), 4000)
    assert_biased(biased, exact, f"NumPyro's density, {family} {wrapper}")


def _numpyro_score(key, family, wrapper):
    """The score-function estimate computed with NumPyro's own ``log_prob`` (negative control)."""
    c = jnp.array([1.0, -2.0])
    make = {"bernoulli": lambda l: nd.Bernoulli(logits=l), "binomial": lambda l: nd.Binomial(N_BINOM, logits=l)}[family]
    d = WRAPPERS[wrapper][0](make(0.0 * c))
    x = d.sample(key)
    return jnp.sum(x).astype(jnp.float32) * jax.grad(lambda t: jnp.sum(WRAPPERS[wrapper][0](make(t * c)).log_prob(x)))(0.0)


def test_more_wrappers_and_nestings():
    """MixtureSameFamily (a component batch), zero inflation around a Binomial, and three wrappers
    nested: gradients at logits 0 against closed forms."""
    cases = {
        # log p(1) = log(0.3 s(l) + 0.7 s(2l)): d/dl at 0 = (0.3 / 4 + 0.7 * 2 / 4) / 0.5
        "mixture_same_family": (lambda l: nd.MixtureSameFamily(nd.Categorical(probs=jnp.array([0.3, 0.7])),
                                                               nd.Bernoulli(logits=jnp.array([l, 2 * l]))), 1, 0.85),
        "zero_inflated_binomial": (lambda l: nd.ZeroInflatedDistribution(nd.Binomial(3, logits=l), gate=0.2), 2, 0.5),
        "expand_mask_to_event": (lambda l: nd.Bernoulli(logits=l).expand((2,)).mask(jnp.array([True, True])).to_event(1),
                                 jnp.array([1, 1]), 1.0),
    }

    @jax.jit
    def grads(l):
        return {k: jax.grad(lambda t: jnp.sum(as_dist(mk(t)).log_prob(x)))(l) for k, (mk, x, _) in cases.items()}

    got = grads(0.0)
    for k, (_, _, want) in cases.items():
        np.testing.assert_allclose(got[k], want, atol=1e-6, err_msg=k)


def test_second_derivatives_and_nan_logits():
    """The corrected densities' curvature is right at 0 too (``-n/4``), and away from it equals
    NumPyro's; NaN logits give NaN."""
    for make, n in ((lambda l: nd.Bernoulli(logits=l), 1), (lambda l: nd.Binomial(N_BINOM, logits=l), N_BINOM)):
        for x in (0, 1):
            h = jax.grad(jax.grad(lambda l: as_dist(make(l)).log_prob(x)))
            np.testing.assert_allclose(h(0.0), -n / 4, rtol=1e-6)
            np.testing.assert_allclose(h(-1.7), jax.grad(jax.grad(lambda l: make(l).log_prob(x)))(-1.7), rtol=1e-5)
    d = nd.Bernoulli(logits=jnp.nan, validate_args=False)
    assert np.isnan(as_dist(d).log_prob(1))
