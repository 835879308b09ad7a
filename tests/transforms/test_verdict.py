"""The plan's verdict is derived from the program: discontinuities in sampled values.

A pathwise (reparameterized) value that reaches a comparison, a rounding, an integer result or
a predicate makes its row "unverified", with the primitive and this file's line; continuous
non-smooth operations stay "yes"; score-function, MVD and enumeration estimators hold the value
fixed and stay "yes" on the same programs (negative controls). ``strict=True`` raises.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
from tensorflow_probability.substrates import jax as tfp

import ppl
from ppl.estimators import MVD, Enum, GumbelSoftmax, ScoreFunction
from ppl.transforms import VerdictError, expectation

from .._stats import assert_unbiased, estimates

tfd = tfp.distributions
T = 0.5
PHI = math.exp(-T * T / 2) / math.sqrt(2 * math.pi)  # d/dt P(z > 0), z ~ N(t, 1), at t = 0.5: 0.3521
HERE = __file__.rsplit("/", 1)[-1]


def line_of(fn, text):
    """The line number of ``text`` inside ``fn``'s source (for the finding's source line)."""
    import inspect

    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, s in enumerate(lines) if text in s)


# --- the three wrong gradients of #13 -------------------------------------------------------------

def cond_program(t):
    z = ppl.sample("z", nd.Normal(t, 1.0))
    return jax.lax.cond(z > 0, lambda: z + 1.0, lambda: z)


def where_program(t):
    z = ppl.sample("z", nd.Normal(t, 1.0))
    return jnp.where(z > 0, 1.0, 0.0)


def floor_program(t):
    z = ppl.sample("z", nd.Normal(t, 1.0))
    return jnp.floor(z)


@pytest.mark.parametrize("fn, prim, text", [(cond_program, "gt", "z > 0"), (where_program, "gt", "z > 0"),
                                            (floor_program, "floor", "jnp.floor")])
def test_discontinuity_makes_the_row_unverified(fn, prim, text):
    plan = expectation(fn).plan(T)
    (row,) = plan.rows
    assert row["verdict"] == "unverified" and not row["unbiased"] and not plan.unbiased
    where = f"{HERE}:{line_of(fn, text)}"
    assert any(f"discontinuous in z at {prim} (" in f and where in f for f in row["findings"]), row["findings"]
    assert "UNVERIFIED" in str(plan) and where in str(plan)


@pytest.mark.parametrize("fn, prim", [(cond_program, "gt"), (where_program, "gt"), (floor_program, "floor")])
def test_strict_mode_raises_naming_site_primitive_and_line(fn, prim, key):
    E = expectation(fn, strict=True)
    with pytest.raises(VerdictError, match=rf"discontinuous in z at {prim} \(.*{HERE}:\d+"):
        E.grad(key, T)
    with pytest.raises(VerdictError):
        jax.grad(lambda t: E.estimate(key, t))(T)
    assert float(E.estimate(key, T)) == float(expectation(fn).estimate(key, T))  # no gradient: no check
    assert "unverified" in str(E.plan(T))  # the plan reports, strict or not


def test_the_unverified_gradients_are_wrong(key):
    """Why the rows are not "yes": for every key the pathwise gradient of where(z > 0) and
    floor(z) is 0 (exact: 0.3521 and sum_k phi(k - t)), and of cond(z > 0, z + 1, z) it is 1
    (exact: d/dt [t + P(z > 0)] = 1.3521)."""
    keys = jax.random.split(key, 3)
    for fn, wrong in ((where_program, 0.0), (floor_program, 0.0), (cond_program, 1.0)):
        E = expectation(fn)
        assert [float(E.grad(k, T)) for k in keys] == [wrong] * 3


@pytest.mark.parametrize("est", [ScoreFunction(), MVD()], ids=["score", "mvd"])
@pytest.mark.parametrize("fn", [cond_program, where_program, floor_program], ids=["cond", "where", "floor"])
def test_held_fixed_estimators_stay_yes(fn, est):
    plan = expectation(fn, estimators={"z": est}).plan(T)
    assert plan.unbiased and plan.rows[0]["verdict"] == "yes", str(plan)


def test_held_fixed_estimators_are_unbiased_on_the_jump():
    """The negative controls' "yes" is true: score function and MVD on where(z > 0) give 0.3521."""
    for est, max_se in ((ScoreFunction(), 0.02), (MVD(), 0.02)):
        E = expectation(where_program, estimators={"z": est})
        assert_unbiased(estimates(lambda k: E.grad(k, T), 4000), PHI, max_se, f"{est.describe()} on where(z > 0)")


def test_enumeration_and_discrete_values_stay_yes():
    def prog(t):
        b = ppl.sample("b", nd.Bernoulli(logits=t))
        return jnp.where(b > 0.5, t**2, jnp.floor(3.0 * t))
    for ests in ({"b": Enum()}, {"b": ScoreFunction()}, {"b": MVD()}):
        assert expectation(prog, estimators=ests).plan(T).unbiased


def test_relaxations_stay_biased():
    def prog(t):
        b = ppl.sample("b", tfd.Bernoulli(logits=t, dtype=jnp.float32))
        return jnp.where(b > 0.5, 1.0, 0.0)
    plan = expectation(prog, estimators={"b": GumbelSoftmax(0.5)}).plan(T)
    assert plan.rows[0]["verdict"] == "NO (biased)" and not plan.unbiased and "BIASED" in str(plan)
    with pytest.raises(VerdictError, match="GumbelSoftmax"):
        expectation(prog, estimators={"b": GumbelSoftmax(0.5)}, strict=True).grad(jax.random.key(0), T)


# --- what is continuous, what is not ----------------------------------------------------------------

CONTINUOUS = {
    "relu": lambda z, t: jax.nn.relu(z),
    "maximum": lambda z, t: jnp.maximum(z, t),
    "minimum": lambda z, t: jnp.minimum(z, 0.2),
    "abs": lambda z, t: jnp.abs(z - t),
    "clip": lambda z, t: jnp.clip(z, -1.0, 1.0),
    "sort values": lambda z, t: jnp.sort(jnp.stack([z, t, -z]))[0],
    "max reduction": lambda z, t: jnp.max(jnp.stack([z, t])),
    "select on a parameter": lambda z, t: jnp.where(t > 0, z, -z),
    "select on a stopped value": lambda z, t: jnp.where(jax.lax.stop_gradient(z) > 0, z, 0.0),
    "nan_to_num": lambda z, t: jnp.nan_to_num(z),
    "logaddexp": lambda z, t: jnp.logaddexp(z, t),
    "equality without atoms": lambda z, t: jnp.where(z == t, 1.0, z),  # P(z == t) = 0
    "support check": lambda z, t: jnp.where(z > -5.0, -z**2, -jnp.inf),  # the other case is impossible
}

DISCONTINUOUS = {
    "argsort": (lambda z, t: jnp.argsort(jnp.stack([z, t]))[0] * 1.0, "sort"),
    "argmax": (lambda z, t: jnp.argmax(jnp.stack([z, t])) * 1.0, "argmax"),
    "integer cast": (lambda z, t: (3.0 * z).astype(jnp.int32) * 1.0, "convert_element_type"),
    "round": (lambda z, t: jnp.round(z), "round"),
    "sign": (lambda z, t: jnp.sign(z) * t, "sign"),
    "mod": (lambda z, t: jnp.mod(z, 1.0), "rem"),
    "equality with an atom": (lambda z, t: jnp.where(jax.nn.relu(z - t) == 0, 1.0, 0.0), "eq"),
    "dynamic index": (lambda z, t: jnp.arange(4.0)[jnp.clip(jnp.floor(z + 2), 0, 3).astype(int)], "floor"),
}


def _site_then(op):
    def prog(t):
        z = ppl.sample("z", nd.Normal(t, 1.0))
        return op(z, t)
    return prog


@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_operations_stay_yes(name):
    plan = expectation(_site_then(CONTINUOUS[name])).plan(T)
    assert plan.unbiased, str(plan)


@pytest.mark.parametrize("name", DISCONTINUOUS)
def test_discontinuous_operations_are_found(name):
    op, prim = DISCONTINUOUS[name]
    plan = expectation(_site_then(op)).plan(T)
    assert plan.rows[0]["verdict"] == "unverified", str(plan)
    assert any(f" at {prim} (" in f for f in plan.rows[0]["findings"]), plan.rows[0]["findings"]


def test_a_held_fixed_value_against_a_moving_threshold_is_found():
    """E_z[1(z > t)] with z ~ N(0.3, 1) held fixed: the estimate is 0, the derivative is not."""
    def prog(t):
        z = ppl.sample("z", nd.Normal(0.3, 1.0))
        return jnp.where(z > t, 1.0, 0.0)
    for est in (ScoreFunction(), MVD(), None):
        plan = expectation(prog, estimators={"z": est} if est else None).plan(T)
        assert plan.rows[0]["verdict"] == "unverified", str(plan)
    assert float(expectation(prog, estimators={"z": ScoreFunction()}).grad(jax.random.key(0), T)) == 0.0


def test_an_unused_comparison_and_an_infinity_branch_are_no_findings():
    def prog(t):
        z = ppl.sample("z", nd.Normal(t, 1.0))
        _ = jnp.floor(z)  # never reaches the value
        return jnp.where(jnp.isfinite(z), z**2, jnp.inf * (z > 0))
    assert expectation(prog).plan(T).unbiased


# --- dependence follows data flow, per site ----------------------------------------------------------

def test_only_the_site_that_reaches_the_jump_is_unverified():
    def prog(t):
        a = ppl.sample("a", nd.Normal(t, 1.0))
        b = ppl.sample("b", nd.Normal(a, 1.0))   # b depends on a: a reaches the jump through b too
        c = ppl.sample("c", nd.Normal(t, 1.0))   # c only ever meets continuous operations
        return jnp.where(b > 0, 1.0, 0.0) + jax.nn.relu(c)
    verdicts = {r["address"]: r["verdict"] for r in expectation(prog).plan(T).rows}
    assert verdicts == {"a": "unverified", "b": "unverified", "c": "yes"}


@jax.jit
def _jitted_step(z):
    return jnp.floor(z)


@jax.custom_jvp
def _custom(z):
    return jnp.round(z)


_custom.defjvp(lambda p, t: (_custom(p[0]), t[0]))  # a (wrong) smooth derivative hides no jump


def _sub(t):
    z = ppl.sample("z", nd.Normal(t, 1.0))
    return jnp.where(z > 0, 1.0, 0.0)


FLOWS = {
    "nested jit": lambda t: _jitted_step(ppl.sample("z", nd.Normal(t, 1.0))),
    "custom_jvp": lambda t: _custom(ppl.sample("z", nd.Normal(t, 1.0))),
    "sub-program": lambda t: ppl.call("sub", _sub, t),
    "scan": lambda t: jax.lax.scan(lambda c, _: (c + jnp.where(c > 1.0, 1.0, 0.1), None),
                                   ppl.sample("z", nd.Normal(t, 1.0)), None, length=3)[0],
    "cond branch": lambda t: jax.lax.cond(t > 0, lambda z: jnp.sign(z), lambda z: z,
                                          ppl.sample("z", nd.Normal(t, 1.0))),
    "while predicate": lambda t: jax.lax.while_loop(lambda c: c[0] < 2.0, lambda c: (c[0] + 1.0, c[1] + 1.0),
                                                    (ppl.sample("z", nd.Normal(t, 1.0)), 0.0))[1],
    "vmapped site": lambda t: jnp.sum(jax.vmap(lambda _: jnp.where(ppl.sample("z", nd.Normal(t, 1.0)) > 0, 1.0, 0.0))(
        jnp.arange(3))),
}


@pytest.mark.parametrize("name", FLOWS)
def test_dependence_follows_data_flow(name):
    plan = expectation(FLOWS[name]).plan(T)
    assert [r["verdict"] for r in plan.rows] == ["unverified"], str(plan)
    with pytest.raises(VerdictError):
        expectation(FLOWS[name], strict=True).grad(jax.random.key(0), T)


def test_site_inside_a_cond_branch():
    def prog(t):
        def yes(t):
            return jnp.floor(ppl.sample("z", nd.Normal(t, 1.0)))

        def no(t):
            return ppl.sample("w", nd.Normal(t, 2.0))
        return jax.lax.cond(t > 0, yes, no, t)
    assert {r["address"]: r["verdict"] for r in expectation(prog).plan(T).rows} == {"z": "unverified", "w": "yes"}


def test_guide_simulated_inside_an_objective():
    from ppl.transforms.vi import density, sim

    def guide(t):
        z = ppl.sample("z", nd.Normal(t, 1.0))
        ppl.sample("k", nd.Normal(jnp.where(z > 0, 1.0, -1.0), 1.0))

    def model():
        ppl.sample("z", nd.Normal(0.0, 1.0))
        ppl.sample("k", nd.Normal(0.0, 1.0))

    def obj(t):
        tr = sim(guide, t)
        return density(model, tr.choices) - tr.score
    rows = {r["address"]: r for r in expectation(obj).plan(T).rows}
    assert rows["z"]["verdict"] == "unverified" and rows["k"]["verdict"] == "yes"
    assert any(f"{HERE}:{line_of(guide, 'z > 0')}" in f for f in rows["z"]["findings"])


def test_a_jump_inside_a_nested_expectation_is_found():
    inner = expectation(lambda t: jnp.where(ppl.sample("z", nd.Normal(t, 1.0)) > 0, 1.0, 0.0))
    inner_ok = expectation(lambda t: jax.nn.relu(ppl.sample("z", nd.Normal(t, 1.0))))

    def outer(t, e):
        w = ppl.sample("w", nd.Normal(t, 1.0))
        return e(t) * w

    plan = expectation(lambda t: outer(t, inner)).plan(T)
    assert [r["verdict"] for r in plan.rows] == ["yes"] and not plan.unbiased
    assert "nested expectation: unverified: the program may be discontinuous in z at gt" in str(plan)
    with pytest.raises(VerdictError, match="discontinuous in z at gt"):
        expectation(lambda t: outer(t, inner), strict=True).grad(jax.random.key(0), T)
    assert expectation(lambda t: outer(t, inner_ok)).plan(T).unbiased


def test_densities_with_support_checks_and_boundary_guards_stay_yes():
    """NumPyro validates a value's support inside log_prob (where(in_support, lp, -inf)) and Beta
    guards its boundaries (where(x == 0, ...)): neither is a jump an ELBO can cross."""
    from ppl.transforms import objectives as O

    for mk in (lambda t: nd.Gamma(jnp.exp(t), 1.0), lambda t: nd.Beta(jnp.exp(t), 2.0),
               lambda t: nd.Uniform(t, t + 2.0), lambda t: tfd.LogNormal(t, 1.0)):
        def guide(t, mk=mk):
            ppl.sample("z", mk(t))

        def model(mk=mk):
            ppl.sample("z", mk(0.1))
        assert expectation(O.elbo(model, guide)).plan((), (jnp.array(0.3),)).unbiased
