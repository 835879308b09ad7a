"""ADEV through ``lax.cond`` / ``lax.switch`` on a discrete site, in forward and reverse mode.

The predicate site's estimator (ScoreFunction, Enum, MVD) meets the estimators of the
values the branches use: a pathwise operand passed into the ``cond`` (Reparam, ScoreFunction,
MVD) or random choices made inside the branches (the same three). Enum and MVD call the
rest of the program several times under ``vmap``, so the ``cond`` runs with a batched
predicate there, the case JAX's reverse mode could not transpose (``stop_gradient`` on a
tangent); the same happens when a user vmaps an objective over keys and takes ``jax.grad``
of the mean.

Every check compares with a closed form (Gaussian expectations of ``sin``, ``v^2``, ``v^4``
and the branch probabilities). Values and gradients are tested for unbiasedness with the
suite's statistics helpers (tests/_stats.py); forward mode (``E.jvp``) and reverse
mode (``E.value_and_grad``) are compared key by key (the same estimate, so they must agree to
rounding), which with the unbiasedness of one makes both unbiased.

The default suite runs six pairs that cover every estimator on each side (each its own
compiled function), the two switches, ``jax.grad`` of a ``vmap``-ed objective and a negative
control; the slow sweep runs all 18 pairs, with ``batch_size=1`` (``lax.map`` instead of
``vmap``: the predicate then is not batched) as well.
"""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
from jax import lax

import ppl
from ppl.estimators import MVD, Enum
from ppl.transforms import Reparam, ScoreFunction, expectation

from .._stats import assert_biased, assert_unbiased, estimates, power_limit

PRED = {"score": ScoreFunction(), "enum": Enum(), "mvd": MVD()}
INNER = {"reparam": Reparam(), "score": ScoreFunction(), "mvd": MVD()}
# (a, c) pairs: a moves the Normal sites, c is the predicate's logit
THETA = jnp.array([[0.3, -0.4], [-0.2, 0.6], [0.5, 0.2]])
HALF = float(np.exp(-0.5))  # E[sin(a + e)] = sin(a) exp(-1/2) and E[cos(a + e)] = cos(a) exp(-1/2), e ~ N(0, 1)


def operand_block(th, j, pred, inner):
    """A pathwise operand into a cond without random choices (and a parameter closed over)."""
    a, c = th[0], th[1]
    b = ppl.sample(f"b{j}", nd.Bernoulli(logits=c), estimator=pred) * 1.0
    z = ppl.sample(f"z{j}", nd.Normal(a, 1.0), estimator=inner)
    return lax.cond(b > 0.5, lambda v: jnp.sin(v) + a * v, lambda v: 0.1 * v * v, z)


def operand_exact(th):
    a, p = th[0], jax.nn.sigmoid(th[1])
    return p * (HALF * jnp.sin(a) + a * a) + (1 - p) * 0.1 * (a * a + 1)


def inside_block(th, j, pred, inner):
    """Random choices inside the branches, and the rest of the program after the cond."""
    a, c = th[0], th[1]
    b = ppl.sample(f"b{j}", nd.Bernoulli(logits=c), estimator=pred) * 1.0
    y = lax.cond(b > 0.5,
                 lambda: jnp.sin(ppl.sample(f"w1_{j}", nd.Normal(a + 0.5, 1.0), estimator=inner)),
                 lambda: ppl.sample(f"w0_{j}", nd.Normal(a, 1.0), estimator=inner) ** 2)
    return y * (1 + a)


def inside_exact(th):
    a, p = th[0], jax.nn.sigmoid(th[1])
    return (1 + a) * (p * HALF * jnp.sin(a + 0.5) + (1 - p) * (a * a + 1))


BLOCKS = {"operand": (operand_block, operand_exact), "inside": (inside_block, inside_exact)}
TH = THETA[0]


def pair_objective(case, pred, inner, j=0):
    block = BLOCKS[case][0]
    return expectation(lambda th: block(th, j, pred, inner))


def pair_exact(case, th):
    return BLOCKS[case][1](th), jax.grad(BLOCKS[case][1])(th)


def both_modes(E, theta):
    """``key -> (value, reverse-mode gradient, forward-mode gradient)`` (jvp along each axis)."""
    basis = jnp.eye(theta.size, dtype=theta.dtype).reshape((theta.size,) + theta.shape)

    def one(key):
        v, g = E.value_and_grad(key, theta)
        _, d = jax.vmap(lambda e: E.jvp(key, (theta,), (e,)))(basis)
        return v, g, d.reshape(theta.shape)

    return one


def check_both_modes(E, theta, exact_v, exact_g, n, what, seed=0):
    v, g, d = estimates(both_modes(E, theta), n, seed=seed)
    v, g, d = np.asarray(v), np.asarray(g), np.asarray(d)
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(d)), f"{what}: non-finite gradient"
    # one estimate, two modes: forward and reverse must agree key by key
    np.testing.assert_allclose(g, d, rtol=1e-4, atol=1e-5, err_msg=f"{what}: reverse != forward mode")
    assert_unbiased(v, exact_v, power_limit(exact_v), what=f"{what}: value")
    assert_unbiased(g.reshape(n, -1), np.ravel(exact_g), power_limit(exact_g), what=f"{what}: gradient")
    assert_unbiased(d.reshape(n, -1), np.ravel(exact_g), power_limit(exact_g), what=f"{what}: forward gradient")


# each predicate estimator twice, each inner estimator twice, both cases three times
DEFAULT_PAIRS = [("enum", "reparam", "operand"), ("mvd", "mvd", "operand"), ("score", "score", "operand"),
                 ("enum", "mvd", "inside"), ("mvd", "score", "inside"), ("score", "reparam", "inside")]


@pytest.mark.statistical
@pytest.mark.parametrize("pred,inner,case", DEFAULT_PAIRS)
def test_cond_on_discrete_site(pred, inner, case):
    """A pathwise operand into the cond, or random choices inside it: unbiased in both modes."""
    E = pair_objective(case, PRED[pred], INNER[inner])
    exact_v, exact_g = pair_exact(case, TH)
    check_both_modes(E, TH, exact_v, exact_g, n=2000, what=f"{pred} x {inner} ({case})")


# -------------------------------------------------------------------------------------------
# lax.switch with three branches on a Categorical

SWITCH_THETA = jnp.array([0.4, -0.3, 0.2])  # (a, l1, l2): the Categorical's logits are (0, l1, l2)


def switch_objective(pred):
    def obj(th):
        a = th[0]
        k = ppl.sample("k", nd.Categorical(logits=jnp.stack([0.0, th[1], th[2]])), estimator=pred)
        z = ppl.sample("z", nd.Normal(a, 1.0))                                  # pathwise operand
        y = lax.switch(k, [lambda v: jnp.sin(v),
                           lambda v: 0.5 * v * v + a,
                           lambda v: v * ppl.sample("u", nd.Normal(a, 1.0), estimator=ScoreFunction())], z)
        return y - 0.3 * a * y

    return expectation(obj)


def switch_exact(th):
    a = th[0]
    p = jax.nn.softmax(jnp.stack([0.0, th[1], th[2]]))
    branches = jnp.stack([HALF * jnp.sin(a), 0.5 * (a * a + 1) + a, a * a])  # E[z u] = a^2
    return (1 - 0.3 * a) * jnp.sum(p * branches)


@pytest.mark.statistical
@pytest.mark.parametrize("pred", ["enum", "mvd"])
def test_switch_three_branches_on_categorical(pred):
    E = switch_objective(PRED[pred])
    exact_v, exact_g = switch_exact(SWITCH_THETA), jax.grad(switch_exact)(SWITCH_THETA)
    check_both_modes(E, SWITCH_THETA, exact_v, exact_g, n=2000, what=f"switch under {pred}")


# -------------------------------------------------------------------------------------------
# negative control, and vmap outside the objective


@pytest.mark.statistical
def test_negative_control_dropped_predicate_derivative_fails():
    """The same check rejects an estimate that ignores the predicate's dependence on c."""
    def obj(theta):
        th = theta
        b = ppl.sample("b0", nd.Bernoulli(logits=lax.stop_gradient(th[1])), estimator=Enum()) * 1.0
        z = ppl.sample("z0", nd.Normal(th[0], 1.0))
        return lax.cond(b > 0.5, lambda v: jnp.sin(v) + th[0] * v, lambda v: 0.1 * v * v, z)

    _, g = estimates(lambda k: expectation(obj).value_and_grad(k, TH), 2000)
    assert_biased(np.asarray(g), jax.grad(operand_exact)(TH), what="predicate derivative dropped")


def test_grad_of_vmapped_objective_over_keys():
    """``jax.grad`` of the mean of ``vmap``-ed estimates (a loss averaged over a batch: the
    predicate is batched over keys, here with ``jit`` inside the ``vmap`` too) equals the mean
    of the per-key gradients. It failed even with a score-function predicate."""
    E = pair_objective("inside", ScoreFunction(), Reparam())
    keys = jax.random.split(jax.random.key(3), 64)
    per_key = jax.jit(lambda t: jax.vmap(lambda k: E.value_and_grad(k, t)[1])(keys).mean(0))(TH)
    loss = lambda t: jax.vmap(jax.jit(lambda k: E.estimate(k, t)))(keys).mean()
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(TH), per_key, rtol=1e-5, atol=1e-6)


def test_cond_inside_scan_while_and_fori_reverse_equals_forward():
    """The same batched-predicate cond inside other control flow: a scan without random
    choices (JAX differentiates it whole), a scan holding random choices (ADEV unrolls it), a
    fori_loop with static bounds, and a while_loop whose predicate depends on an enumerated
    site. Reverse mode must give the forward-mode estimate, key by key."""
    def obj(t):
        a, c = t[0], t[1]
        b = ppl.sample("b", nd.Bernoulli(logits=c), estimator=Enum()) * 1.0
        z = ppl.sample("z", nd.Normal(a, 1.0))

        def plain(carry, x):
            return lax.cond(b + x > 1.5, lambda v: jnp.sin(v) * a, lambda v: v * v, carry), None

        s1, _ = lax.scan(plain, z, jnp.arange(3.0))

        def holding(carry, _):
            m = ppl.sample("m", nd.Bernoulli(logits=c), estimator=MVD()) * 1.0
            w = ppl.sample("w", nd.Normal(a, 1.0))
            return carry + lax.cond(m > 0.5, jnp.sin, lambda v: 0.1 * v * v, w + carry), None

        s2, _ = lax.scan(holding, 0.0, None, length=2)
        s3 = lax.fori_loop(0, 2, lambda i, v: lax.cond(b > 0.5, jnp.sin, jnp.cos, v), z)
        n = lax.while_loop(lambda i: i < 2 + b, lambda i: i + 1.0, 0.0)
        return s1 + s2 + s3 + n * z

    v, g, d = estimates(both_modes(expectation(obj), TH), 16)
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(g, d, rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------------------------------
# the full sweep: every pair as its own objective


@pytest.mark.slow
@pytest.mark.statistical
@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("case", ["operand", "inside"])
@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("pred", list(PRED))
def test_cond_every_pair_sweep(pred, inner, case, batch_size):
    """Slow (18 pairs x 2 batch sizes, one compile each, ~5 s apiece on 2 CPU cores): every
    pair on its own, 10000 samples; ``batch_size=1`` runs the continuation calls in a
    ``lax.map`` loop instead of ``vmap`` (the predicate then is not batched)."""
    p = PRED[pred]
    if pred != "score":
        p = type(p)(batch_size=batch_size)
    elif batch_size != 2:
        pytest.skip("ScoreFunction calls the continuation once")
    E = pair_objective(case, p, INNER[inner], j=1)
    exact_v, exact_g = pair_exact(case, THETA[1])
    check_both_modes(E, THETA[1], exact_v, exact_g, n=10000, what=f"{pred}(batch {batch_size}) x {inner} ({case})",
                     seed=1)
