"""How deep ADEV's continuation-passing walk goes.

The walk iterates over equations and recurses only at continuation points (random choices and
``lax.cond`` holding them), so a long program needs no more Python frames than a short one;
many random choices get room for ``FRAMES_PER_POINT`` frames each, for the walk only.
"""
import sys

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
import pytest

import ppl
from ppl.estimators import MVD, DisARM, Enum, Reparam, ScoreFunction
from ppl.transforms import adev, expectation

N_STEPS = 3000  # one equation each: 3000 sequential equations, plus 60 observations


def _long(t):
    z = ppl.sample("z", nd.Normal(t, 1.0))
    x = jnp.zeros(())
    for i in range(N_STEPS):
        x = x + z
        if i % 50 == 0:
            ppl.sample(f"y{i}", nd.Normal(x, 1.0), obs=0.0)
    return x


def _under_low_limit(run, room):
    """``run()`` under a recursion limit of the current depth + ``room``, failing if anything
    raises the limit meanwhile."""
    old, raised = sys.getrecursionlimit(), []
    set_limit = sys.setrecursionlimit
    set_limit(adev._depth() + room)
    sys.setrecursionlimit = raised.append
    try:
        return run(), raised
    finally:
        sys.setrecursionlimit = set_limit
        set_limit(old)


def test_long_program_walks_without_raising_the_recursion_limit():
    """3000 equations and 60 observations after one random choice, under a limit of the current
    depth + 600 frames: the walk neither recurses per equation nor raises the limit."""
    E = expectation(_long)
    k = jax.random.key(0)
    _, raised = _under_low_limit(lambda: jax.make_jaxpr(lambda t: E.jvp(k, (t,), (1.0,)))(0.5), 600)
    assert raised == []


@pytest.mark.slow
def test_long_program_gradient_under_a_low_recursion_limit():
    """Slow (about 15 s on 2 cores: 3000 equations compiled): the same program's gradient is right."""
    E = expectation(_long)
    g, raised = _under_low_limit(lambda: jax.jit(jax.grad(lambda t: E.estimate(jax.random.key(0), t)))(0.5), 600)
    assert raised == []
    assert jnp.allclose(g, N_STEPS, rtol=1e-5)  # d/dt E[N z] with z ~ N(t, 1), exact for Reparam


def _chain(n, est, discrete):
    def objective(t):
        x = t
        for i in range(n):
            if discrete:
                x = x + ppl.sample(f"z{i}", nd.Bernoulli(jax.nn.sigmoid(0.1 * x)), estimator=est)
            else:
                x = x + ppl.sample(f"z{i}", nd.Normal(0.1 * x, 1.0), estimator=est)
        return x
    return objective


def _cond_chain(n, est, discrete):
    def objective(t):
        x = t
        for i in range(n):
            x = jax.lax.cond(x > 0, lambda x: x + ppl.sample(f"c{i}", nd.Normal(x, 1.0)), lambda x: x - 1.0, x)
        return x
    return objective


@pytest.mark.parametrize("make, est, discrete", [
    (_chain, Reparam(), False), (_chain, ScoreFunction(), False), (_chain, MVD(), False),
    (_chain, Enum(), True), (_chain, DisARM(), True), (_cond_chain, None, False)],
    ids=["Reparam", "ScoreFunction", "MVD", "Enum", "DisARM", "cond"])
def test_frames_per_continuation_point_within_the_bound(monkeypatch, make, est, discrete):
    """The walk's depth grows by at most FRAMES_PER_POINT per continuation point (a cond with
    one site inside is two points)."""
    deepest = [0]
    inner = adev._eval

    def measured(*a):
        deepest[0] = max(deepest[0], adev._depth())
        return inner(*a)

    monkeypatch.setattr(adev, "_eval", measured)
    depth = []
    k = jax.random.key(1)
    for n in (1, 3):
        deepest[0] = 0
        E = expectation(make(n, est, discrete))
        jax.make_jaxpr(lambda t: E.jvp(k, (t,), (1.0,)))(0.3)  # the walk runs while tracing
        depth.append(deepest[0])
    points = 2 * (2 if make is _cond_chain else 1)
    per_point = (depth[1] - depth[0]) / points
    assert 0 < per_point <= adev.FRAMES_PER_POINT


def test_many_random_choices_get_room_and_the_limit_comes_back():
    """40 random choices need more than a limit of depth + 500 frames: the walk raises the
    limit for itself (to depth + FRAMES_PER_POINT per choice) and puts it back afterwards."""
    E = expectation(_chain(40, Reparam(), False))
    k = jax.random.key(2)
    old = sys.getrecursionlimit()
    low = adev._depth() + 500
    try:
        sys.setrecursionlimit(low)
        jaxpr = jax.make_jaxpr(lambda t: E.jvp(k, (t,), (1.0,)))(0.3)
        assert sys.getrecursionlimit() == low
    finally:
        sys.setrecursionlimit(old)
    assert len(jaxpr.jaxpr.outvars) == 2
