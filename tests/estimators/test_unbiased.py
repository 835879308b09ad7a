"""Conformance suite: every estimator x every family it supports is unbiased, unit-tested
with a hand-written continuation AND end to end through ``expectation(...).grad``; negative
controls must fail the same check; variance claims as inequalities."""
import dataclasses
import importlib.util
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
from tensorflow_probability.substrates import jax as tfp

import ppl
from ppl.estimators import (ARM, MVD, Baseline, DisARM, EMABaseline, Enum, Estimator, GumbelSoftmax,
                            LeaveOneOut, Reparam, ScoreFunction, StraightThrough, estimator_dataclass)
from ppl.transforms import expectation

from .._stats import assert_biased, assert_unbiased, estimates, power_limit
from ._fixtures import dual_site, enum_mean, hand_kont

tfd = tfp.distributions
pytestmark = pytest.mark.statistical

_spec = importlib.util.spec_from_file_location(
    "custom_estimator", pathlib.Path(__file__).parents[2] / "examples" / "custom_estimator.py")
custom = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(custom)


@dataclasses.dataclass(frozen=True)
class Case:
    """A site distribution ``make(theta)``, a test function ``f`` and the exact ``E[f]``."""
    make: Callable
    f: Callable
    mean: Callable
    theta: tuple = (0.2, -0.3)


# --- families -------------------------------------------------------------------------------
_W3, _A3 = jnp.array([1.0, -1.0, 2.0]), jnp.array([0.3, 0.0, -0.5])


def _normal_params(t):
    return t[0] + jnp.array([0.0, 0.5, -1.0]), jnp.exp(0.5 * t[1]) * jnp.array([1.0, 0.5, 1.5])


def _normal_f(x):
    return jnp.sum(_W3 * jnp.sin(x)) + 0.5 * jnp.sum((x - _A3) ** 2)


def _normal_mean(t):
    mu, s = _normal_params(t)
    return jnp.sum(_W3 * jnp.sin(mu) * jnp.exp(-s ** 2 / 2)) + 0.5 * jnp.sum((mu - _A3) ** 2 + s ** 2)


def _bern_logits(t):
    return t[0] + t[1] * jnp.array([1.0, -1.0, 0.5])


def _bern_neg_logits(t):
    """Clearly negative logits (about -2.6, -2.0, -2.45): DisARM's weight uses sigmoid(|a|)."""
    return _bern_logits(t) - 2.5


def _bern_neg_mean(t):
    p = jax.nn.sigmoid(_bern_neg_logits(t))
    return enum_mean(jnp.stack([1 - p, p], -1), _bern_f)


def _bern_f(x):
    return (jnp.dot(x.astype(jnp.float32), jnp.array([1.0, 2.0, -1.5])) - 0.4) ** 2


def _bern_mean(t):
    p = jax.nn.sigmoid(_bern_logits(t))
    return enum_mean(jnp.stack([1 - p, p], -1), _bern_f)


_CAT_T = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0], [2.0, 1.0, -0.5]])


def _cat_logits(t):
    return t[0] * jnp.array([[1.0, 0.0, -1.0], [0.5, 1.0, 0.0]]) + t[1] * jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, -1.0]])


def _cat_f(x):
    return _CAT_T[x[0], x[1]]


def _cat_mean(t):
    return enum_mean(jax.nn.softmax(_cat_logits(t), -1), _cat_f)


def _count_f(x):
    x = x.astype(jnp.float32)
    return jnp.sum(jnp.cos(x)) + 0.2 * x[0] * x[1]


def _rates(t):
    return jnp.exp(t[0] + t[1] * jnp.array([0.0, 1.0]))


def _poisson_mean(t):
    lam = _rates(t)
    return jnp.sum(jnp.exp(lam * (jnp.cos(1.0) - 1)) * jnp.cos(lam * jnp.sin(1.0))) + 0.2 * lam[0] * lam[1]


def _geo_probs(t):
    return jax.nn.sigmoid(t[0] + t[1] * jnp.array([0.0, 1.0]) + 0.5)


def _geometric_mean(t):
    p = _geo_probs(t)
    q = 1 - p
    re = p * (1 - q * jnp.cos(1.0)) / ((1 - q * jnp.cos(1.0)) ** 2 + (q * jnp.sin(1.0)) ** 2)
    m = q / p
    return jnp.sum(re) + 0.2 * m[0] * m[1]


def _exp_mean(t):
    lam = _rates(t)
    return jnp.sum(lam ** 2 / (lam ** 2 + 1)) + 1 / (lam[0] * lam[1])


def _exp_f(x):
    return jnp.sum(jnp.cos(x)) + x[0] * x[1]


def _binom_probs(t):
    return jax.nn.sigmoid(t[0] - 2 * t[1])


def _binom_f(x):
    x = x.astype(jnp.float32)
    return jnp.sum((x - 1.2) ** 2 + jnp.sin(x))


def _binom_mean(t):
    p = _binom_probs(t)
    k = jnp.arange(4.0)
    pmf = jnp.array([1.0, 3.0, 3.0, 1.0]) * p ** k * (1 - p) ** (3 - k)
    return enum_mean(pmf[None], _binom_f)


CASES = {
    "normal": Case(lambda t: nd.Normal(*_normal_params(t)), _normal_f, _normal_mean),
    "tfp_normal": Case(lambda t: tfd.Normal(*_normal_params(t)), _normal_f, _normal_mean),
    "exponential": Case(lambda t: nd.Exponential(_rates(t)), _exp_f, _exp_mean),
    "bernoulli_logits": Case(lambda t: nd.Bernoulli(logits=_bern_logits(t)), _bern_f, _bern_mean),
    "bernoulli_probs": Case(lambda t: nd.Bernoulli(probs=jax.nn.sigmoid(_bern_logits(t))), _bern_f, _bern_mean),
    "tfp_bernoulli": Case(lambda t: tfd.Bernoulli(logits=_bern_logits(t)), _bern_f, _bern_mean),
    "bernoulli_negative_logits": Case(lambda t: nd.Bernoulli(logits=_bern_neg_logits(t)), _bern_f, _bern_neg_mean),
    "categorical": Case(lambda t: nd.Categorical(logits=_cat_logits(t)), _cat_f, _cat_mean),
    "tfp_categorical": Case(lambda t: tfd.Categorical(logits=_cat_logits(t)), _cat_f, _cat_mean),
    "binomial": Case(lambda t: nd.Binomial(3, probs=_binom_probs(t)), _binom_f, _binom_mean),
    "poisson": Case(lambda t: nd.Poisson(_rates(t)), _count_f, _poisson_mean),
    "geometric": Case(lambda t: nd.Geometric(probs=_geo_probs(t)), _count_f, _geometric_mean),
}

_BERN = ["bernoulli_logits", "bernoulli_probs", "tfp_bernoulli"]
_FINITE = _BERN + ["categorical", "tfp_categorical", "binomial"]
ESTIMATORS = {
    "Reparam": (Reparam(), ["normal", "tfp_normal", "exponential"]),
    "ScoreFunction": (ScoreFunction(), [c for c in CASES if c != "bernoulli_probs"]),
    "Baseline": (Baseline(ScoreFunction(), 2.0), ["normal", "bernoulli_logits", "poisson"]),
    "EMABaseline": (EMABaseline(ScoreFunction(), 1.0, 0.9), ["tfp_normal", "categorical"]),
    "LeaveOneOut": (LeaveOneOut(4), ["normal", "bernoulli_logits", "tfp_bernoulli", "categorical", "binomial", "poisson"]),
    "Enum": (Enum(), _FINITE),
    "MVD": (MVD(), ["normal", "tfp_normal", "exponential", "categorical", "tfp_categorical", "poisson",
                    "geometric"] + _BERN),
    "ARM": (ARM(), _BERN),
    "DisARM": (DisARM(), _BERN + ["bernoulli_negative_logits"]),
    "Antithetic (examples/custom_estimator.py)": (custom.Antithetic(), ["normal", "tfp_normal"]),
}
# The default run covers every estimator on a NumPyro and (where it applies) a TFP family;
# the rest of the matrix is marked slow (run with -m slow).
FAST = {("Reparam", "normal"), ("Reparam", "tfp_normal"), ("ScoreFunction", "bernoulli_logits"),
        ("ScoreFunction", "tfp_normal"), ("ScoreFunction", "poisson"), ("Baseline", "normal"),
        ("EMABaseline", "categorical"), ("LeaveOneOut", "tfp_bernoulli"), ("Enum", "categorical"),
        ("Enum", "tfp_bernoulli"), ("Enum", "binomial"), ("MVD", "normal"), ("MVD", "tfp_categorical"),
        ("MVD", "poisson"), ("MVD", "geometric"), ("MVD", "exponential"), ("MVD", "bernoulli_probs"),
        ("ARM", "bernoulli_logits"), ("DisARM", "tfp_bernoulli"), ("DisARM", "bernoulli_negative_logits"),
        ("Antithetic (examples/custom_estimator.py)", "normal")}
PAIRS = [pytest.param(e, c, id=f"{e}-{c}", marks=() if (e, c) in FAST else pytest.mark.slow)
         for e, (_, cs) in ESTIMATORS.items() for c in cs]
N = 8000
V = jnp.array([1.0, -0.7])  # the unit tests' tangent direction in theta-space


def _both(est, case, n=N, noise=0.1):
    """N estimates of the directional derivative (hand continuation) and of the gradient (end to end)."""
    theta = jnp.array(case.theta)
    kont = hand_kont(case.f, noise)
    E = expectation(lambda t: case.f(ppl.sample("x", case.make(t))), estimators={"x": est})

    def one(key):
        k1, k2 = jax.random.split(key)
        _, tan = est.jvp(k1, dual_site(case.make, theta, V), kont)
        return tan[0], E.grad(k2, theta)

    return estimates(one, n)


@pytest.mark.parametrize("est_name,case_name", PAIRS)
def test_unbiased(est_name, case_name):
    est, case = ESTIMATORS[est_name][0], CASES[case_name]
    exact = jax.grad(case.mean)(jnp.array(case.theta))
    unit, e2e = _both(est, case)
    assert_unbiased(unit, exact @ V, power_limit(exact), f"{est_name} on {case_name}, hand continuation")
    assert_unbiased(e2e, exact, power_limit(exact), f"{est_name} on {case_name}, through expectation")


# --- negative controls: deliberately biased estimators must fail the same check -----------
@estimator_dataclass
class NoScore(Estimator):
    """Score function with the score term dropped: biased for any site with a tangent."""

    def jvp(self, key, site, kont):
        k1, k2 = jax.random.split(key)
        return kont(k2, site.dist().sample(k1), None)


@estimator_dataclass
class Scaled(Estimator):
    """A wrongly scaled estimator: ``factor`` times the inner tangent."""

    inner: Estimator
    factor: float = 1.25

    def jvp(self, key, site, kont):
        out, dout = self.inner.jvp(key, site, kont)
        return out, [self.factor * t for t in dout]


_TFP_BERN_FLOAT = Case(lambda t: tfd.Bernoulli(logits=_bern_logits(t), dtype=jnp.float32), _bern_f, _bern_mean)
NEGATIVE = {
    "NoScore-bernoulli": (NoScore(), CASES["bernoulli_logits"]),
    "MVD*1.25-normal": (Scaled(MVD()), CASES["normal"]),
    "LeaveOneOut*1.25-categorical": (Scaled(LeaveOneOut(4)), CASES["categorical"]),
    "GumbelSoftmax-tfp_bernoulli_float": (GumbelSoftmax(1.0), _TFP_BERN_FLOAT),
    "StraightThrough-tfp_bernoulli_float": (StraightThrough(), _TFP_BERN_FLOAT),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith(("LeaveOneOut", "StraightThrough"))
                                  else n for n in NEGATIVE])
def test_negative_control_fails(name):
    est, case = NEGATIVE[name]
    exact = jax.grad(case.mean)(jnp.array(case.theta))
    unit, e2e = _both(est, case)
    assert_biased(unit, exact @ V, f"{name}, hand continuation")
    assert_biased(e2e, exact, f"{name}, through expectation")


def test_relaxations_are_marked_biased_in_the_plan():
    def obj(t):
        return _bern_f(ppl.sample("x", tfd.Bernoulli(logits=_bern_logits(t), dtype=jnp.float32)))
    for est in (GumbelSoftmax(), StraightThrough()):
        plan = expectation(obj, estimators={"x": est}).plan(jnp.zeros(2))
        assert not plan.unbiased and "NO (biased)" in str(plan) and "BIASED" in str(plan)
    assert expectation(obj, estimators={"x": DisARM()}).plan(jnp.zeros(2)).unbiased


# --- variance claims, as inequalities ---------------------------------------------------------
def test_enum_has_zero_variance_when_it_is_the_only_site():
    for name in ("categorical", "tfp_bernoulli"):
        case = CASES[name]
        unit, e2e = _both(Enum(), case, n=64, noise=0.0)
        assert np.all(np.asarray(unit) == np.asarray(unit)[0]) and np.all(np.asarray(e2e) == np.asarray(e2e)[0])
        np.testing.assert_allclose(e2e[0], jax.grad(case.mean)(jnp.array(case.theta)), rtol=1e-5, atol=1e-6)


def _shifted_normal(t):
    return jnp.sum(ppl.sample("x", nd.Normal(t, 1.0)) ** 2) + 100.0


def _grads(est, n=4000, theta=0.5):
    E = expectation(_shifted_normal, estimators={"x": est})
    return np.asarray(estimates(lambda k: E.grad(k, theta), n))


def test_baseline_lowers_variance_where_it_must():
    """f(x) = x^2 + 100: the score term's variance is dominated by E[f] ~ 101."""
    plain, based = _grads(ScoreFunction()), _grads(Baseline(ScoreFunction(), 101.25))
    assert based.var() < 0.01 * plain.var()
    assert_unbiased(based, 1.0, 0.1, "Baseline(101.25)")  # d/dt (t^2 + 1) = 2t = 1


def test_leave_one_out_beats_score_function_at_equal_samples():
    n = 4
    loo = _grads(LeaveOneOut(n))
    plain = _grads(ScoreFunction(), n=4000 * n).reshape(-1, n).mean(1)  # n samples per estimate
    assert loo.var() < 0.05 * plain.var()
    assert_unbiased(loo, 1.0, 0.1, "LeaveOneOut(4)")


def test_disarm_variance_not_above_arm():
    case = CASES["bernoulli_logits"]
    arm, disarm = _both(ARM(), case)[1], _both(DisARM(), case)[1]
    assert np.all(np.var(disarm, 0) <= np.var(arm, 0))


# --- state and pytrees --------------------------------------------------------------------------
def test_ema_baseline_update_is_pure_and_does_not_recompile():
    est = EMABaseline(ScoreFunction(), jnp.float32(0.0), 0.5)
    new = est.update(jnp.float32(4.0))
    assert float(est.value) == 0.0 and float(new.value) == 2.0 and isinstance(new, EMABaseline)
    traces = []

    @jax.jit
    def step(e, key, theta):
        traces.append(1)
        v, g = expectation(_shifted_normal, estimators={"x": e}).value_and_grad(key, theta)
        return e.update(v), g

    keys = jax.random.split(jax.random.key(3), 50)
    for k in keys:
        est, _ = step(est, k, 0.5)
    assert len(traces) == 1
    assert 95.0 < float(est.value) < 108.0  # tracks E[f] = 101.25


def test_baseline_loss_drives_b_to_the_mean():
    from ppl.estimators import baseline_loss
    vals = jnp.array([1.0, 3.0, 5.0])
    b = 0.0
    for _ in range(200):
        b = b - 0.1 * jax.grad(lambda b: jnp.mean(jax.vmap(lambda v: baseline_loss(v, b))(vals)))(b)
    assert abs(b - 3.0) < 1e-3


def test_enum_batched_binomial_through_expectation():
    def obj(t):
        return jnp.sum(ppl.sample("x", nd.Binomial(3, probs=jax.nn.sigmoid(t))).astype(jnp.float32))
    g = expectation(obj, estimators={"x": Enum()}).grad(jax.random.key(0), jnp.zeros(2))
    np.testing.assert_allclose(g, 3 * 0.25 * jnp.ones(2), rtol=1e-5)
