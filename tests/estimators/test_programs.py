"""Programs with several dependent sites, each with its own estimator, against exact gradients."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl.estimators import ARM, MVD, Baseline, DisARM, Enum, LeaveOneOut, Reparam, ScoreFunction
from ppl.transforms import expectation

from .._stats import assert_unbiased, estimates, power_limit

pytestmark = pytest.mark.statistical


def enum_poisson_program(t):
    z = ppl.sample("z", nd.Bernoulli(logits=t[0]))
    x = ppl.sample("x", nd.Normal(t[1] + 2.0 * z, 1.0))               # depends on z
    n = ppl.sample("n", nd.Poisson(jnp.exp(t[2] + 0.3 * x)))           # depends on x
    return (n - 2.0) ** 2 + x


def enum_poisson_exact(t):
    """E[(n-2)^2 | x] = lam^2 - 3 lam + 4 with lam = exp(t2 + 0.3 x); x ~ N(mu, 1) lognormal moments."""
    def given_z(z):
        mu = t[1] + 2.0 * z
        lam1 = jnp.exp(t[2] + 0.3 * mu + 0.045)
        lam2 = jnp.exp(2 * t[2] + 0.6 * mu + 0.18)
        return lam2 - 3 * lam1 + 4 + mu
    p = jax.nn.sigmoid(t[0])
    return p * given_z(1.0) + (1 - p) * given_z(0.0)


_C = jnp.array([[0.5, -1.0], [0.0, 1.0], [-1.0, 2.0]])


def loo_disarm_program(t):
    k = ppl.sample("k", nd.Categorical(logits=t[:3]))
    b = ppl.sample("b", nd.Bernoulli(logits=t[3] + _C[k]))             # vector site, depends on k
    y = ppl.sample("y", nd.Normal(b.sum() + t[4], jnp.exp(0.2 * t[4])))
    return y ** 2 + k * b[0]


def loo_disarm_exact(t):
    pk = jax.nn.softmax(t[:3])
    total = 0.0
    for k in range(3):
        pb = jax.nn.sigmoid(t[3] + _C[k])
        for b0 in (0, 1):
            for b1 in (0, 1):
                w = (pb[0] if b0 else 1 - pb[0]) * (pb[1] if b1 else 1 - pb[1])
                ey2 = (b0 + b1 + t[4]) ** 2 + jnp.exp(0.4 * t[4])
                total = total + pk[k] * w * (ey2 + k * b0)
    return total


PROGRAMS = {
    "enum-mvd-scorebaseline": (enum_poisson_program, enum_poisson_exact, jnp.array([0.3, -0.5, 0.1]),
                               {"z": Enum(), "x": MVD(), "n": Baseline(ScoreFunction(), 2.8)}),
    "loo-disarm-reparam": (loo_disarm_program, loo_disarm_exact, jnp.array([0.2, -0.4, 0.1, 0.3, 0.5]),
                           {"k": LeaveOneOut(3), "b": DisARM(), "y": Reparam()}),
}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_program_gradient_is_unbiased(name):
    prog, exact_fn, theta, ests = PROGRAMS[name]
    E = expectation(prog, estimators=ests)
    plan = E.plan(theta)
    assert plan.unbiased and [r["estimator"] for r in plan.rows][:len(ests)] == [e.describe() for e in ests.values()]
    v, g = estimates(lambda k: E.value_and_grad(k, theta), 8000)
    exact = jax.grad(exact_fn)(theta)
    assert_unbiased(g, exact, power_limit(exact), f"{name} gradient")
    assert_unbiased(v, exact_fn(theta), power_limit(exact_fn(theta)), f"{name} value")


def _with_batch_size(ests, b):
    return {a: dataclasses.replace(e, batch_size=b) if hasattr(e, "batch_size") else e for a, e in ests.items()}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_batch_size_changes_the_schedule_not_the_estimate(name):
    """Continuation calls one at a time, in vmapped groups of 2 (with a remainder), or all
    vmapped: the same calls with the same keys, so the same estimate up to rounding."""
    prog, _, theta, ests = PROGRAMS[name]
    variants = [ests] + ([{**ests, "b": ARM()}] if "b" in ests else [])
    for ests in variants:
        ests = _with_batch_size(ests, 1)
        ref = expectation(prog, estimators=ests).value_and_grad(jax.random.key(3), theta)
        for b in (2, 64):
            got = expectation(prog, estimators=_with_batch_size(ests, b)).value_and_grad(jax.random.key(3), theta)
            for r, g in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
                np.testing.assert_allclose(g, r, rtol=2e-5, atol=1e-5, err_msg=f"batch_size={b} {ests}")
        loops = [str(jax.make_jaxpr(lambda t, es=es: expectation(prog, estimators=es).grad(jax.random.key(3), t))(theta))
                 .count("scan[") for es in (ests, _with_batch_size(ests, 64))]
        assert loops[0] > 0 and loops[1] == 0, loops  # lax.map loops one at a time, one vmap for all
