"""ADEV: unbiased gradients through control flow, nested expectations, and named errors.

Statistical checks use the suite's statistics (``tests/_stats.py``): N independent estimates
from split fixed keys, a tolerance of Z standard errors with Z from the suite-wide Bonferroni
budget, a power guard (a maximum standard error) and a negative control that must fail the
same check.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl.transforms import EstimatorError, Reparam, ScoreFunction, expectation

from .._stats import assert_biased, assert_unbiased, consistent, estimates

N = 20000


def grad_samples(E, *args, n=N, seed=0):
    return np.asarray(estimates(lambda k: E.grad(k, *args), n, seed=seed))


# -------------------------------------------------------------------------------------------
# the silent wrong answer of another JAX library: random choices inside lax.scan


def scan_objective(theta):
    def body(c, _):
        z = ppl.sample("z", nd.Bernoulli(logits=theta))
        x = ppl.sample("x", nd.Normal(theta, 1.0))
        return c + z * x, z

    total, zs = jax.lax.scan(body, 0.0, None, length=3)
    return total**2


def scan_exact(theta):
    # sum of 3 iid terms t_i = z_i x_i: E[t] = p theta, E[t^2] = p (theta^2 + 1)
    p = jax.nn.sigmoid(theta)
    m1, m2 = p * theta, p * (theta**2 + 1.0)
    return 3 * m2 + 6 * m1**2


def test_scan_values_depend_on_the_key():
    E = expectation(scan_objective)
    vals = jax.jit(jax.vmap(lambda k: E.estimate(k, 0.4)))(jax.random.split(jax.random.key(0), 64))
    assert len(np.unique(np.asarray(vals))) > 10
    # each iteration draws its own values: the mean of total**2, which counts the iterations'
    # covariances, matches the closed form for independent draws (reused draws give 6.25 against
    # 2.43); power guard: stderr <= 0.017, so that a value 5% off fails too
    v = np.asarray(jax.jit(jax.vmap(lambda k: E.estimate(k, 0.4)))(jax.random.split(jax.random.key(1), 3 * N)))
    assert_unbiased(v, scan_exact(0.4), max_se=0.017, what="scan value")


@pytest.mark.statistical
@pytest.mark.parametrize("est", [None, ScoreFunction()], ids=["default", "score"])
def test_scan_gradient_unbiased(est):
    E = expectation(scan_objective, estimators=None if est is None else {"x": est})
    exact = float(jax.grad(scan_exact)(0.4))
    g = grad_samples(E, 0.4)
    assert_unbiased(g, exact, max_se=0.08 if est is None else 0.2)
    # negative control: the same objective with the Bernoulli's score term dropped is biased
    assert_biased(grad_samples(expectation(_no_score_scan), 0.4), exact)


def _no_score_scan(theta):
    def body(c, _):
        z = ppl.sample("z", nd.Bernoulli(logits=jax.lax.stop_gradient(theta)))
        x = ppl.sample("x", nd.Normal(theta, 1.0))
        return c + z * x, z

    total, _ = jax.lax.scan(body, 0.0, None, length=3)
    return total**2


@pytest.mark.statistical
def test_fori_loop_static_bounds_unrolled():
    def obj(theta):
        return jax.lax.fori_loop(0, 4, lambda i, c: c + ppl.sample("x", nd.Normal(theta, 1.0)) ** 2, 0.0)

    g = grad_samples(expectation(obj, estimators={"x": ScoreFunction()}), 0.3)
    assert_unbiased(g, 4 * 2 * 0.3, max_se=0.2)


# -------------------------------------------------------------------------------------------
# cond, vmap, nested jit, nested expectations, dependent sites


def cond_objective(theta):
    b = ppl.sample("b", nd.Bernoulli(logits=theta))
    x = jax.lax.cond(b == 1, lambda: ppl.sample("x", nd.Normal(theta, 1.0)), lambda: 2.0 * theta)
    return x**2


@pytest.mark.statistical
def test_cond_gradient_unbiased():
    exact = float(jax.grad(lambda t: jax.nn.sigmoid(t) * (t**2 + 1) + (1 - jax.nn.sigmoid(t)) * 4 * t**2)(-1.0))
    assert_unbiased(grad_samples(expectation(cond_objective), -1.0), exact, max_se=0.05)
    # negative control: score term of the branch variable dropped
    def biased(theta):
        b = ppl.sample("b", nd.Bernoulli(logits=jax.lax.stop_gradient(theta)))
        x = jax.lax.cond(b == 1, lambda: ppl.sample("x", nd.Normal(theta, 1.0)), lambda: 2.0 * theta)
        return x**2

    assert_biased(grad_samples(expectation(biased), -1.0), exact)


@pytest.mark.statistical
def test_vmap_sites_independent_per_element():
    def obj(theta):
        xs = jax.vmap(lambda _: ppl.sample("x", nd.Normal(theta, 1.0)))(jnp.arange(4))
        return jnp.mean(xs) ** 2  # E = theta^2 + 1/4 only if the 4 draws are independent

    E = expectation(obj)
    v = np.asarray(jax.jit(jax.vmap(lambda k: E.estimate(k, 0.7)))(jax.random.split(jax.random.key(2), N)))
    assert consistent(v, 0.49 + 0.25)
    assert_unbiased(grad_samples(E, 0.7), 1.4, max_se=0.02)
    assert_unbiased(grad_samples(expectation(obj, estimators={"x": ScoreFunction()}), 0.7), 1.4, max_se=0.05)
    plan = E.plan(0.7)
    assert plan.rows[0]["shape"] == (4,)


@pytest.mark.statistical
def test_nested_jit_and_nested_expectation():
    inner = expectation(lambda t: ppl.sample("y", nd.Normal(t, 1.0)) ** 2)

    @jax.jit
    def helper(x):
        return x + ppl.sample("w", nd.Normal(x, 1.0))

    def obj(theta):
        x = ppl.sample("x", nd.Normal(theta, 1.0))
        return inner(x) + helper(x)

    # E[x^2 + 1 + 2x] = theta^2 + 2 + 2 theta -> 2 theta + 2
    assert_unbiased(grad_samples(expectation(obj), 0.7), 3.4, max_se=0.03)


@pytest.mark.statistical
def test_dependent_sites_three_estimators():
    from ppl.models.conjugate import TwoCoins

    def obj(theta):
        c1 = ppl.sample("c1", nd.Bernoulli(logits=theta))
        x = ppl.sample("x", nd.Normal(theta * c1, 1.0))
        k = ppl.sample("k", nd.Poisson(jnp.exp(theta) + c1))
        return x**2 + k

    # E[x^2 | c1] = theta^2 c1 + 1; E[k | c1] = e^theta + c1
    exact = float(jax.grad(lambda t: jax.nn.sigmoid(t) * (t**2 + 1 + jnp.exp(t) + 1)
                           + (1 - jax.nn.sigmoid(t)) * (1 + jnp.exp(t)))(0.2))
    E = expectation(obj, estimators={"c1": ScoreFunction(), "x": Reparam(), "k": ScoreFunction()})
    assert_unbiased(grad_samples(E, 0.2), exact, max_se=0.05)
    assert TwoCoins  # the ground-truth models ship with the package


def test_jit_vmap_of_value_and_grad():
    E = expectation(cond_objective)
    f = jax.jit(jax.vmap(lambda k, t: E.value_and_grad(k, t), in_axes=(0, None)))
    v, g = f(jax.random.split(jax.random.key(0), 8), 0.5)
    assert v.shape == (8,) and g.shape == (8,) and np.all(np.isfinite(g))
    # forward mode agrees with reverse mode on the same key: the same float32 quantity computed in
    # another operation order, so a few dozen ulps (float32 eps 1.2e-7) apart at most
    k = jax.random.key(3)
    _, t = E.jvp(k, (0.5,), (1.0,))
    np.testing.assert_allclose(t, E.grad(k, 0.5), rtol=1e-5)


# -------------------------------------------------------------------------------------------
# named errors


def test_while_loop_site_named():
    def obj(theta):
        return jax.lax.while_loop(lambda c: c < 3.0, lambda c: c + ppl.sample("step", nd.Exponential(theta)), 0.0)

    with pytest.raises(ppl.UnsupportedControlFlow, match="'step' inside lax.while_loop"):
        expectation(obj).grad(jax.random.key(0), 1.0)


def test_custom_jvp_site_named():
    @jax.custom_jvp
    def f(t):
        return t + ppl.sample("inner", nd.Normal(t, 1.0))

    f.defjvp(lambda p, t: (f(*p), t[0]))
    with pytest.raises(ppl.UnsupportedControlFlow, match="'inner' inside a function with a custom derivative"):
        expectation(lambda t: f(t)).grad(jax.random.key(0), 1.0)


def test_long_scan_refused_with_workaround():
    def obj(theta):
        return jax.lax.scan(lambda c, _: (c + ppl.sample("s", nd.Normal(theta, 1.0)), None), 0.0, None,
                            length=100000)[0]

    with pytest.raises(ppl.UnsupportedControlFlow, match="'s' inside lax.scan of length 100000.*MAX_UNROLL"):
        expectation(obj).grad(jax.random.key(0), 1.0)


def test_reparam_of_discrete_fails_at_trace_time():
    E = expectation(lambda t: ppl.sample("coin", nd.Bernoulli(logits=t)) * 1.0, estimators={"coin": Reparam()})
    with pytest.raises(EstimatorError, match="Reparam at site 'coin'.*BernoulliLogits"):
        jax.make_jaxpr(lambda t: E.grad(jax.random.key(0), t))(0.3)


def test_unknown_estimator_address_and_type():
    obj = lambda t: ppl.sample("x", nd.Normal(t, 1.0))  # noqa: E731
    with pytest.raises(KeyError, match=r"addresses no random choice of the objective has: \['y'\].*\['x'\]"):
        expectation(obj, estimators={"y": Reparam()}).grad(jax.random.key(0), 0.0)
    with pytest.raises(TypeError, match="not an Estimator object"):
        expectation(obj, estimators={"x": "reparam"})


def test_site_annotation_and_precedence():
    def obj(t):
        return ppl.sample("x", nd.Normal(t, 1.0), estimator=ScoreFunction()) ** 2

    assert expectation(obj).plan(0.0).rows[0]["estimator"] == "ScoreFunction"
    assert expectation(obj, estimators={"x": Reparam()}).plan(0.0).rows[0]["estimator"] == "Reparam"
    assert expectation(obj, estimators=lambda s: None).plan(0.0).rows[0]["estimator"] == "ScoreFunction"


def test_plan_lists_every_site():
    plan = expectation(cond_objective).plan(0.5)
    text = str(plan)
    assert [r["address"] for r in plan.rows] == ["b", "x"]
    assert "BernoulliLogits" in text and "ScoreFunction" in text and "Reparam" in text
    assert plan.unbiased and "gradient estimate: unbiased" in text


def test_objective_outside_estimate_refused():
    E = expectation(lambda t: ppl.sample("x", nd.Normal(t, 1.0)))
    with pytest.raises(RuntimeError, match="outside an objective"):
        E(0.0)


def test_debug_mode_names_the_nonfinite_site():
    import optax

    from ppl.transforms.fit import NonFiniteError, fit

    def obj(p):
        z = ppl.sample("z", nd.Normal(p["m"], 1.0))
        w = ppl.sample("w", nd.Normal(jnp.log(p["m"] - 2.5), 1.0))  # NaN once m < 2.5
        return -((z + 3.0) ** 2) + 0.0 * w

    E = expectation(obj)
    with pytest.raises(NonFiniteError, match="step 2 .*first non-finite random choice: random choice 'w'") as info:
        fit(lambda k, p, b: -E.estimate(k, p), optax.sgd(0.01), {"m": 2.6}, key=jax.random.key(0),
            num_steps=20, chunk=10, debug=True, progress=False)
    assert int(info.value.state.step) == 2


def test_inside_shard_map_per_device_gradients_match_and_check_vma_is_refused_clearly():
    """Data parallelism: each of two CPU devices takes half the data and its own key. With
    ``check_vma=False`` every device's value-and-gradient equals the same computation outside
    ``shard_map`` (score function, Enum, MVD at a Bernoulli site; Reparam at a Normal); with
    ``check_vma=True`` ppl refuses with the fix rather than JAX's internal error."""
    import json
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_shard_map_worker.py")
    r = subprocess.run([sys.executable, worker], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) == {"score", "enum", "mvd"}
    for name, res in out.items():
        assert max(res["diffs"]) < 1e-5, (name, res["diffs"])
        assert res["error_with_check_vma"] and "Pass check_vma=False to jax.shard_map" in res["error_with_check_vma"]
