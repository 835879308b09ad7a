"""Enum, MVD and the score function along a plate: per-point assignments of a 2-component
Gaussian mixture, against exact enumeration in float64 (numpy, by brute force for small N and
by the per-point closed form at N = 200); the score function's Rao-Blackwellization along the
plate against the plain one; and the fallback to the joint treatment when the rest of the
objective is not a sum of per-element terms (never a silent wrong gradient)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl.estimators import MVD, Baseline, Enum, EstimatorError, ScoreFunction
from ppl.transforms import expectation
from ppl.transforms._estimator import estimator_dataclass
from ppl.transforms._plate_split import per_element
from ppl.transforms.vi import density, sim

from .._stats import assert_biased, assert_unbiased, estimates, power_limit

PRIOR = np.array([0.4, -0.3])   # mixture weights' logits
SCALE = 0.8                      # each component's sd


def model(y, locs):
    _mixture(y, locs, False)


def model_pair(y, locs):
    _mixture(y, locs, True)


def _mixture(y, locs, pair):
    n = y.shape[0]
    with ppl.plate("data", n):
        z = ppl.sample("z", nd.Categorical(logits=jnp.asarray(PRIOR, jnp.float32)).expand((n,)))
        mean = locs[z] + (0.5 * locs[jnp.roll(z, 1)] if pair else 0.0)  # pair: y_i depends on z_{i-1}
        ppl.sample("y", nd.Normal(mean, SCALE), obs=y)


def _guide_of(family):
    def guide(logits):
        with ppl.plate("data", logits.shape[0]):
            ppl.sample("z", family(logits=logits))

    return guide


def _elbo_of(guide):
    def elbo(y, params):
        q = sim(guide, params["l"])
        return density(model, q.choices, y, params["m"]) - q.score

    return elbo


guide = _guide_of(nd.Categorical)
elbo = _elbo_of(guide)
bernoulli_elbo = _elbo_of(_guide_of(nd.Bernoulli))


def _data(n, seed=3):
    r = np.random.default_rng(seed)
    y = np.where(r.random(n) < 0.5, -1.5, 2.0) + SCALE * r.standard_normal(n)
    params = {"m": np.array([-1.1, 1.7]), "l": 0.8 * r.standard_normal((n, 2))}
    return y, params


def _f32(y, params):
    return jnp.asarray(y, jnp.float32), {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}


def _log_softmax(a):
    a = np.asarray(a, np.float64)
    return a - np.log(np.sum(np.exp(a - a.max(-1, keepdims=True)), -1, keepdims=True)) - a.max(-1, keepdims=True)


def _terms(y, m, z):
    """log p(y_i, z_i) per point (float64)."""
    return (_log_softmax(PRIOR)[z] - 0.5 * ((y - m[z]) / SCALE) ** 2 - np.log(SCALE * np.sqrt(2 * np.pi)))


def exact_brute_force(y, params, f=lambda v: v, pair=False):
    """``E_q[f(log p(y, z) - log q(z))]`` and its gradient in (m, l), by summing over all 2^N
    assignments in float64 (the gradient by central differences of the exact sum)."""
    y = np.asarray(y, np.float64)

    def value(m, l):
        lq = _log_softmax(l)
        total = 0.0
        for zs in itertools.product(range(2), repeat=len(y)):
            z = np.array(zs)
            lp = np.sum(_terms(y, m, z))
            if pair:
                lp = np.sum(_log_softmax(PRIOR)[z] - 0.5 * ((y - m[z] - 0.5 * m[np.roll(z, 1)]) / SCALE) ** 2
                            - np.log(SCALE * np.sqrt(2 * np.pi)))
            lqz = np.sum(lq[np.arange(len(y)), z])
            total += np.exp(lqz) * f(lp - lqz)
        return total

    m, l = np.asarray(params["m"], np.float64), np.asarray(params["l"], np.float64)
    h = 1e-6
    gm = np.array([(value(m + h * e, l) - value(m - h * e, l)) / (2 * h) for e in np.eye(2)])
    gl = np.zeros_like(l)
    for idx in np.ndindex(l.shape):
        e = np.zeros_like(l)
        e[idx] = h
        gl[idx] = (value(m, l + e) - value(m, l - e)) / (2 * h)
    return value(m, l), {"m": gm, "l": gl}


def exact_per_point(y, params):
    """The ELBO ``sum_i sum_k q_ik (log p(y_i, k) - log q_ik)`` and its gradient in closed form."""
    y = np.asarray(y, np.float64)
    m, l = np.asarray(params["m"], np.float64), np.asarray(params["l"], np.float64)
    lq = _log_softmax(l)
    q = np.exp(lq)
    g = np.stack([_terms(y, m, np.full(len(y), k)) for k in range(2)], 1) - lq   # (N, 2)
    value = np.sum(q * g)
    gl = q * (g - np.sum(q * g, 1, keepdims=True))           # d/dl of sum_k q_k g_k (the -lq term's mean is 0)
    gm = np.array([np.sum(q[:, k] * (y - m[k]) / SCALE ** 2) for k in range(2)])
    return value, {"m": gm, "l": gl}


def _value_and_grad(est, y, params, objective=elbo):
    E = expectation(objective, estimators={"z": est})
    return jax.jit(lambda k: E.value_and_grad(k, y, params, argnums=1))


def test_per_element_enum_is_exact_against_brute_force_and_equals_joint():
    y, params = _data(4)
    v_ex, g_ex = exact_brute_force(y, params)
    yf, pf = _f32(y, params)
    v, g = _value_and_grad(Enum(), yf, pf)(jax.random.key(0))
    np.testing.assert_allclose(v, v_ex, rtol=1e-5)
    for k in ("m", "l"):
        np.testing.assert_allclose(g[k], g_ex[k], rtol=1e-4, atol=1e-4)
    vj, gj = _value_and_grad(Enum(plates=False), yf, pf)(jax.random.key(0))   # 2^4 calls
    np.testing.assert_allclose(v, vj, rtol=1e-6)
    np.testing.assert_allclose(g["l"], gj["l"], rtol=1e-5, atol=1e-6)


def test_per_element_enum_at_200_points_matches_the_closed_form():
    y, params = _data(200)
    yf, pf = _f32(y, params)
    E = expectation(elbo, estimators={"z": Enum()})
    plan = str(E.plan(yf, pf))
    assert "Enum (per element)" in plan and "2 continuation calls for its 200 elements" in plan, plan
    v, g = _value_and_grad(Enum(), yf, pf)(jax.random.key(1))
    v_ex, g_ex = exact_per_point(y, params)
    np.testing.assert_allclose(v, v_ex, rtol=1e-5)
    np.testing.assert_allclose(g["m"], g_ex["m"], rtol=1e-4)
    np.testing.assert_allclose(g["l"], g_ex["l"], rtol=1e-4, atol=1e-4)
    with pytest.raises(EstimatorError, match=r"'z'.*2\^200"):   # the joint treatment is refused by name
        _value_and_grad(Enum(plates=False), yf, pf)(jax.random.key(1))


@pytest.mark.parametrize("est", [MVD(), ScoreFunction(), Baseline(ScoreFunction(), -20.0)],
                         ids=["MVD", "ScoreFunction", "Baseline"])
def test_sampling_estimators_along_the_plate_are_unbiased(est):
    y, params = _data(4)
    _, g_ex = exact_brute_force(y, params)
    yf, pf = _f32(y, params)
    E = expectation(elbo, estimators={"z": est})
    assert f"{est.describe()} (per element)" in str(E.plan(yf, pf))
    g = estimates(lambda k: E.grad(k, yf, pf, argnums=1), 4000)
    for k in ("m", "l"):
        assert_unbiased(np.asarray(g[k]).reshape(4000, -1), g_ex[k].ravel(), power_limit(g_ex[k]),
                        f"{est.describe()} d/d{k}")


@estimator_dataclass
class _WrongElementScore(ScoreFunction):
    """A planted bug: each element's terms weighted by its neighbour's score."""

    def jvp(self, key, site, kont):
        k1, k2 = site.split_key(key)
        x = site.dist().sample(k1)
        pe = per_element(site, kont, k2, x, "test")
        out, dout, pout, pdout = pe.terms(x)
        _, dlp = site.jvp(lambda dd: jnp.roll(pe.by_element(dd.sampling_log_prob(x)), 1))
        return ([b + p.sum(0) for b, p in zip(out, pout)],
                [b + pd.sum(0) + jnp.tensordot(dlp, p, axes=1) for b, pd, p in zip(dout, pdout, pout)])


def test_negative_control_a_score_on_the_wrong_element_is_caught():
    y, params = _data(4)
    _, g_ex = exact_brute_force(y, params)
    yf, pf = _f32(y, params)
    E = expectation(elbo, estimators={"z": _WrongElementScore()})
    g = estimates(lambda k: E.grad(k, yf, pf, argnums=1), 4000)
    assert_biased(np.asarray(g["l"]).reshape(4000, -1), g_ex["l"].ravel(), "neighbour's score")


def _grad_variance(est, n, draws=400):
    y, params = _data(n)
    yf, pf = _f32(y, params)
    E = expectation(elbo, estimators={"z": est})
    g = estimates(lambda k: E.grad(k, yf, pf, argnums=1)["l"], draws, seed=5)
    return float(np.sum(np.var(np.asarray(g, np.float64), axis=0)))


def test_rao_blackwellized_score_function_has_lower_variance():
    """At N = 20 points each element's score no longer multiplies the other 19 points' terms:
    the gradient's total variance falls (measured: by a factor of about 280); the margin asks
    for a factor of 4. Negative control: with one point there is nothing to drop, the two
    estimators are the same, and the same inequality fails."""
    rb, plain = _grad_variance(ScoreFunction(), 20), _grad_variance(ScoreFunction(plates=False), 20)
    assert rb < plain / 4, (rb, plain)
    rb1, plain1 = _grad_variance(ScoreFunction(), 1), _grad_variance(ScoreFunction(plates=False), 1)
    assert not rb1 < plain1 / 4, (rb1, plain1)
    np.testing.assert_allclose(rb1, plain1, rtol=1e-5)


def test_not_a_sum_of_per_element_terms_falls_back_to_the_joint_treatment():
    """A continuation that is not a sum of per-element terms: a square of the ELBO's terms
    (cross terms between elements) and a likelihood where y_i depends on z_{i-1}. Each
    estimator says "joint" in the plan and gives the joint result: exact for Enum."""
    y, params = _data(3)
    yf, pf = _f32(y, params)

    def squared(y, params):
        q = sim(guide, params["l"])
        return (density(model, q.choices, y, params["m"]) - q.score) ** 2 / 10

    def pair(y, params):
        q = sim(guide, params["l"])
        return density(model_pair, q.choices, y, params["m"]) - q.score

    for objective, f, is_pair, why in ((squared, lambda v: v ** 2 / 10, False, "nonlinear operation"),
                                       (pair, lambda v: v, True, "mixes the elements")):
        for est in (Enum(), MVD(), ScoreFunction()):
            plan = str(expectation(objective, estimators={"z": est}).plan(yf, pf))
            assert f"{est.describe()} (joint)" in plan and "joint treatment" in plan and why in plan, plan
        v, g = _value_and_grad(Enum(), yf, pf, objective)(jax.random.key(0))
        v_ex, g_ex = exact_brute_force(y, params, f, is_pair)
        np.testing.assert_allclose(v, v_ex, rtol=1e-5)
        np.testing.assert_allclose(g["l"], g_ex["l"], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(g["m"], g_ex["m"], rtol=1e-3, atol=1e-3)


def test_not_separable_and_too_large_for_joint_enumeration_is_refused_by_name():
    y, params = _data(40)
    yf, pf = _f32(y, params)

    def squared(y, params):
        q = sim(guide, params["l"])
        return (density(model, q.choices, y, params["m"]) - q.score) ** 2

    with pytest.raises(EstimatorError, match=r"Enum at site 'z'.*2\^40.*not provably a sum of per-element terms"):
        _value_and_grad(Enum(), yf, pf, squared)(jax.random.key(0))


def test_the_readme_example_runs_and_its_plan_says_per_element(capsys):
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[2] / "estimators" / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "Enum()})" in b)
    ns: dict = {}
    exec(compile(block, "estimators/README.md", "exec"), ns)
    printed = capsys.readouterr().out
    assert "Enum (per element)" in printed and "2 continuation calls for its 200 elements" in printed
    assert np.all(np.isfinite(np.asarray(ns["grad"]["l"])))


def test_per_element_enum_of_a_bernoulli_vector_per_point_enumerates_each_point_jointly():
    """Each point holds a pair of Bernoullis (``.to_event(1)``) and the objective is nonlinear
    within the pair: per element, each point's pair is enumerated jointly (2^2 = 4 calls for
    the 3 points, not 2^6 = 64); the result equals the joint enumeration."""
    w = jnp.array([[0.5, -1.2], [0.3, 0.8], [-0.7, 0.4]])

    def objective(logits):
        with ppl.plate("data", 3):
            b = ppl.sample("b", nd.Bernoulli(logits=logits).to_event(1)).astype(jnp.float32)
        return jnp.sum((b @ jnp.array([1.0, -2.0]) + w[:, 0]) ** 2 + b[:, 0] * b[:, 1] * w[:, 1])

    logits = jnp.array([[0.3, -0.9], [1.2, 0.4], [-0.5, 0.7]])
    E = expectation(objective, estimators={"b": Enum()})
    assert "4 continuation calls for its 3 elements" in str(E.plan(logits))
    v, g = jax.jit(lambda k: E.value_and_grad(k, logits))(jax.random.key(0))
    Ej = expectation(objective, estimators={"b": Enum(plates=False)})
    vj, gj = jax.jit(lambda k: Ej.value_and_grad(k, logits))(jax.random.key(0))
    np.testing.assert_allclose(v, vj, rtol=1e-5)
    np.testing.assert_allclose(g, gj, rtol=1e-4, atol=1e-5)


def test_per_element_mvd_on_bernoulli_points_is_unbiased():
    """The same mixture with a Bernoulli guide (logits l_i: the Categorical with logits (0, l_i)):
    MVD per element makes 2 calls (the sample, every point flipped)."""
    y, params = _data(4)
    l = params["l"][:, 1] - params["l"][:, 0]
    v_ex, g_ex = exact_per_point(y, {"m": params["m"], "l": np.stack([np.zeros(4), l], 1)})
    yf, pf = _f32(y, {"m": params["m"], "l": l})
    E = expectation(bernoulli_elbo, estimators={"z": MVD()})
    assert "MVD (per element)" in str(E.plan(yf, pf))
    g = estimates(lambda k: E.grad(k, yf, pf, argnums=1), 2000)
    assert_unbiased(np.asarray(g["l"]), g_ex["l"][:, 1], power_limit(g_ex["l"]), "MVD Bernoulli d/dl")
    assert_unbiased(np.asarray(g["m"]), g_ex["m"], power_limit(g_ex["m"]), "MVD Bernoulli d/dm")


def test_per_element_mvd_on_normal_points_is_unbiased():
    """Per-point Normal latents z_i ~ N(a y_i + b, softplus(c)) against the closed-form ELBO of
    z_i ~ N(0, 1), y_i ~ N(z_i, 0.6): MVD per element makes 1 + 3 calls (loc +-, scale +)."""
    y = jnp.asarray(np.random.default_rng(1).normal(size=6) * 1.5, jnp.float32)
    sl = 0.6

    def local_model(y):
        with ppl.plate("data", y.shape[0]):
            z = ppl.sample("z", nd.Normal(0.0, 1.0).expand(y.shape))
            ppl.sample("y", nd.Normal(z, sl), obs=y)

    def local_guide(y, th):
        with ppl.plate("data", y.shape[0]):
            ppl.sample("z", nd.Normal(th[0] * y + th[1], jax.nn.softplus(th[2])))

    def objective(y, th):
        q = sim(local_guide, y, th)
        return density(local_model, q.choices, y) - q.score

    def exact(th):
        m, s = th[0] * y + th[1], jax.nn.softplus(th[2])
        prior = -0.5 * jnp.log(2 * jnp.pi) - (m ** 2 + s ** 2) / 2
        lik = -0.5 * jnp.log(2 * jnp.pi * sl ** 2) - ((y - m) ** 2 + s ** 2) / (2 * sl ** 2)
        return jnp.sum(prior + lik + 0.5 * jnp.log(2 * jnp.pi * jnp.e * s ** 2))

    th = jnp.array([0.5, 0.2, -0.3])
    E = expectation(objective, estimators={"z": MVD()})
    assert "MVD (per element)" in str(E.plan(y, th))
    g_ex = np.asarray(jax.grad(exact)(th))
    g = estimates(lambda k: E.grad(k, y, th, argnums=1), 1000)
    assert_unbiased(np.asarray(g), g_ex, power_limit(g_ex), "MVD Normal per element")


def test_two_per_point_latents_are_both_enumerated_per_element():
    """z1_i ~ Bernoulli, z2_i ~ Categorical(3) given z1_i, in the same plate of 4, both
    enumerated: the inner site's per-element sum (a dot over the plate) keeps the outer one per
    element too: 2 x 3 calls, against the joint 2^4 x 3^4; the same value and gradient."""
    a = jnp.array([[0.2, -1.0, 0.6], [1.1, 0.3, -0.4], [-0.8, 0.9, 0.5], [0.3, 0.3, -1.2]])

    def objective(l1, l2):
        with ppl.plate("data", 4):
            z1 = ppl.sample("z1", nd.Bernoulli(logits=l1))
            z2 = ppl.sample("z2", nd.Categorical(logits=l2 + z1[:, None]))
        return jnp.sum((a[jnp.arange(4), z2] - z1) ** 2)

    l1 = jnp.array([0.4, -0.7, 1.3, 0.2])
    l2 = jnp.array([[0.1, 0.5, -0.3], [0.8, -0.2, 0.0], [-1.0, 0.4, 0.9], [0.6, 0.1, -0.5]])
    E = expectation(objective, estimators={"z1": Enum(), "z2": Enum()})
    plan = str(E.plan(l1, l2))
    assert plan.count("(per element)") == 2, plan
    v, g = jax.jit(lambda k: E.value_and_grad(k, l1, l2, argnums=(0, 1)))(jax.random.key(0))
    Ej = expectation(objective, estimators={"z1": Enum(plates=False), "z2": Enum(plates=False)})
    vj, gj = jax.jit(lambda k: Ej.value_and_grad(k, l1, l2, argnums=(0, 1)))(jax.random.key(0))
    np.testing.assert_allclose(v, vj, rtol=1e-5)
    for x, xj in zip(g, gj):
        np.testing.assert_allclose(x, xj, rtol=1e-4, atol=1e-5)


def test_the_plan_says_when_an_estimator_does_not_use_the_plate():
    from ppl.estimators import LeaveOneOut

    y, params = _data(3)
    yf, pf = _f32(y, params)
    plan = expectation(elbo, estimators={"z": LeaveOneOut(2)}).plan(yf, pf)
    assert plan.rows[0]["estimator"] == "LeaveOneOut (joint)"
    assert plan.rows[0]["plate"] == "plate 'data': joint treatment (LeaveOneOut does not use plates)"
