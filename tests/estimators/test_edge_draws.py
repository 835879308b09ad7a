"""Every random draw ppl makes itself stays finite at the extreme values of the PRNG, and the
samplers that turn uniform bits into draws have the exact distribution.

The edges are forced, not waited for. The seam is JAX's own: a PRNG implementation
(``jax.extend.random.define_prng_impl``) whose bits are chosen by the key's data:

- mode 0, all bits zero: every ``jax.random.uniform`` is exactly 0, every normal -5.42;
- mode 1, all bits one: every uniform is ``1 - 2^-23``, the largest value float32
  ``jax.random.uniform`` returns, every normal 5.22;
- mode 2, counting: element ``i`` of a draw gets mantissa ``offset + i``, so one draw of
  ``2^23`` elements takes every value the float32 uniform can take, once.

Keys split and fold in to themselves, so every draw inside an estimator sees the same edge.
"""
import jax
import jax.extend.random as jer
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
from tensorflow_probability.substrates import jax as tfp

import ppl
from ppl.estimators import (ARM, MVD, MVD_FAMILIES, Baseline, DisARM, EMABaseline, Enum, GumbelSoftmax,
                            LeaveOneOut, Reparam, ScoreFunction, StraightThrough)
from ppl.estimators import _draws
from ppl.transforms import _threefry, expectation
from ppl.transforms import cbo as C

from ._fixtures import dual_site, hand_kont

tfd = tfp.distributions
GRID = 2 ** 23           # the float32 uniform's values
ZERO, ONES, COUNT = 0, 1, 2


def _edge_bits(key, bit_width, shape):
    mode, offset = key[0], key[1]
    dt = jnp.dtype(f"uint{bit_width}")
    if bit_width != 32:  # only the counting mode needs the layout; constant modes work for any width
        return jnp.where(mode == ZERO, jnp.zeros(shape, dt), jnp.full(shape, np.iinfo(dt).max, dt))
    count = (offset + jax.lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)) << 9
    return jnp.where(mode == ZERO, jnp.uint32(0), jnp.where(mode == ONES, jnp.uint32(0xFFFFFFFF), count))


EDGE = jer.define_prng_impl(
    key_shape=(2,), seed=lambda s: jnp.stack([jnp.uint32(s), jnp.uint32(0)]),
    split=lambda k, shape: jnp.broadcast_to(k, tuple(shape) + (2,)),
    random_bits=_edge_bits, fold_in=lambda k, d: k, name="edge", tag="edge")


def edge_key(mode, offset=0):
    return jax.random.wrap_key_data(jnp.array([mode, offset], jnp.uint32), impl=EDGE)


EDGES = jax.random.wrap_key_data(jnp.array([[ZERO, 0], [ONES, 0]], jnp.uint32), impl=EDGE)


def test_the_edge_prng_reaches_the_uniforms_extremes():
    u = jax.vmap(lambda k: jax.random.uniform(k, (3,)))(EDGES)
    np.testing.assert_array_equal(u, [[0.0] * 3, [1 - 2.0 ** -23] * 3])
    every = jax.random.uniform(edge_key(COUNT), (GRID,))
    np.testing.assert_array_equal(np.asarray(every)[[0, 1, -1]], [0.0, 2.0 ** -23, 1 - 2.0 ** -23])
    # the negative control: JAX's own Rayleigh is infinite at u = 0 (the bug MVD had)
    r = jax.random.rayleigh(edge_key(COUNT), 1.0, (GRID,))
    assert int(jnp.sum(~jnp.isfinite(r))) == 1


# --- samplers, at every value the uniform can take --------------------------------------
def _ks(values, cdf):
    """The Kolmogorov distance between the sampler's exact law (every value equally likely)
    and ``cdf``, in float64."""
    x = np.sort(np.asarray(values, np.float64))
    f = np.asarray(cdf(x), np.float64)
    n = x.size
    return max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))


# ppl's own samplers (estimators/_draws.py): Rayleigh for MVD's Normal, logistic for the
# Bernoulli relaxations; with their exact CDFs
OWN = {"rayleigh": (_draws.rayleigh, lambda x: -np.expm1(-x ** 2 / 2)),
       "logistic": (_draws.logistic, lambda x: 1 / (1 + np.exp(-x)))}
# the samplers ppl takes from JAX (MVD's Exponential x + E' and Geometric x + G', the normals
# of MVD's chi_3, GumbelSoftmax's Gumbel noise) and CBO's unrolled normal (transforms/_threefry.py)
BORROWED = {
    "jax.random.exponential": lambda k: jax.random.exponential(k, (GRID,)),
    "jax.random.geometric": lambda k: jax.random.geometric(k, 0.3, (GRID,)).astype(jnp.float32),
    "jax.random.normal": lambda k: jax.random.normal(k, (GRID,)),
    "jax.random.gumbel": lambda k: jax.random.gumbel(k, (GRID,)),
    "_threefry.normal_from_bits": lambda k: _threefry.normal_from_bits(jax.lax.iota(jnp.uint32, GRID) << 9),
}
STEP = 2.0 ** -23


@pytest.mark.parametrize("name", OWN)
def test_own_sampler_is_finite_everywhere_and_exact_to_the_grid(name):
    draw, cdf = OWN[name]
    x = jax.jit(lambda k: draw(k, (GRID,)))(edge_key(COUNT))
    assert bool(jnp.all(jnp.isfinite(x))), f"{name}: {int(jnp.sum(~jnp.isfinite(x)))} non-finite values"
    # 2^23 equally likely values: the exact law on this grid is half a step (2^-24) away in
    # Kolmogorov distance, plus float32 rounding of the transform (measured: 1.2e-7 Rayleigh,
    # 6e-8 logistic); one and a half steps is the bound. A wrong scale must fail it.
    d = _ks(x, cdf)
    assert d <= 1.5 * STEP, f"{name}: Kolmogorov distance {d:.3g} from the exact law"
    assert _ks(np.asarray(x) * 1.0001, cdf) > 1.5 * STEP


def test_borrowed_samplers_are_finite_at_every_uniform():
    draws = jax.jit(lambda k: {n: jnp.sum(~jnp.isfinite(f(k))) for n, f in BORROWED.items()})(edge_key(COUNT))
    assert {n: int(c) for n, c in draws.items()} == {n: 0 for n in BORROWED}
    # a normal draw is never exactly 0 (backends' power iteration divides by its norm)
    assert float(jnp.min(jnp.abs(jax.jit(BORROWED["jax.random.normal"])(edge_key(COUNT))))) > 0


def test_open_uniform_is_the_symmetric_midpoint_grid():
    u = np.asarray(_draws.open_uniform(edge_key(COUNT), (GRID,)), np.float64)
    np.testing.assert_array_equal(u, (np.arange(GRID) + 0.5) / GRID)
    assert u[-1] == np.nextafter(np.float32(1), np.float32(0))     # the largest float32 below 1
    np.testing.assert_array_equal((1 - u)[::-1], u)                   # u and 1 - u: the same law
    lo, hi = jax.vmap(lambda k: _draws.open_uniform(k, (2,)))(EDGES)
    np.testing.assert_array_equal(np.concatenate([lo, hi]), [2.0 ** -24] * 2 + [1 - 2.0 ** -24] * 2)


def test_open_uniform_in_other_float_widths():
    for dtype in (jnp.bfloat16, jnp.float16):
        u = np.asarray(jax.vmap(lambda k: _draws.open_uniform(k, (1,), dtype))(EDGES), np.float64)
        m = 2.0 ** -(jnp.finfo(dtype).nmant + 1)
        np.testing.assert_array_equal(u.ravel(), [m, 1 - m])


def test_mvd_normal_rule_gives_the_exact_derivative_over_every_draw():
    """The loc part of MVD's Normal rule, averaged over all 2^23 equally likely Rayleigh draws
    (a deterministic expectation, no Monte Carlo error), equals the exact derivative."""
    mu, s = 0.3, 1.7
    c = {"loc": jnp.full((GRID,), mu), "scale": jnp.full((GRID,), s)}
    x = jnp.full((GRID,), mu + 0.4 * s)
    w, xp, xm = jax.jit(MVD_FAMILIES["Normal"])(edge_key(COUNT), c, x)["loc"]
    xp, xm = np.asarray(xp, np.float64), np.asarray(xm, np.float64)
    assert np.all(np.isfinite(xp)) and np.all(np.isfinite(xm))
    est = float(w[0]) * np.mean(np.sin(xp) - np.sin(xm))
    exact = np.cos(mu) * np.exp(-s ** 2 / 2)        # d/dmu E[sin(mu + s Z)]
    assert abs(est - exact) <= 2e-6, (est, exact)


@pytest.mark.parametrize("est", [ARM(), DisARM()], ids=["ARM", "DisARM"])
def test_arm_disarm_expectation_over_the_uniform_grid_is_the_exact_derivative(est):
    """ARM/DisARM on one Bernoulli element, averaged over ``u`` at every 256th value of the
    open grid (a midpoint rule: the estimate is piecewise constant in ``u`` with two jumps, so
    the rule's error is at most two cells of 2^-15 times the largest jump) equals the exact
    derivative; the endpoints are in the forced-edge tests below."""
    a, f = 0.7, (lambda x: jnp.sum(3.0 * x - 1.0) ** 2)                # k(0) = 1, k(1) = 4
    site = dual_site(lambda t: nd.Bernoulli(logits=jnp.full((1,), t)), jnp.asarray(a), jnp.asarray(1.0))
    keys = jax.random.wrap_key_data(
        jnp.stack([jnp.full((2 ** 15,), COUNT, jnp.uint32), jnp.arange(2 ** 15, dtype=jnp.uint32) * 256 + 128], -1),
        impl=EDGE)
    tans = jax.jit(jax.vmap(lambda k: est.jvp(k, site, hand_kont(f, noise=0.0))[1][0]))(keys)
    exact = jax.nn.sigmoid(a) * jax.nn.sigmoid(-a) * (4.0 - 1.0)
    bound = 2 * 2.0 ** -15 * float(jnp.max(jnp.abs(tans)))
    assert abs(float(np.mean(np.asarray(tans, np.float64))) - exact) <= bound, (np.mean(tans), exact, bound)


# --- every MVD rule's own draws, at both edges ------------------------------------------
RULE_CASES = {
    "Normal": ({"loc": jnp.array([0.3, -2.0]), "scale": jnp.array([0.5, 3.0])}, jnp.array([0.1, 4.0])),
    "Bernoulli": ({"probs": jnp.array([0.3, 0.9])}, jnp.array([0, 1])),
    "Categorical": ({"probs": jnp.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])}, jnp.array([1, 2])),
    "Poisson": ({"rate": jnp.array([0.7, 12.0])}, jnp.array([0.0, 9.0])),
    "Geometric": ({"probs": jnp.array([0.3, 1e-3])}, jnp.array([2.0, 0.0])),
    "Exponential": ({"rate": jnp.array([0.7, 30.0])}, jnp.array([0.5, 1e-3])),
}


@pytest.mark.parametrize("family", MVD_FAMILIES)
def test_every_mvd_rule_is_finite_at_both_edges(family):
    canon, x = RULE_CASES[family]
    for k in EDGES:
        for name, (c, xp, xm) in MVD_FAMILIES[family](k, canon, x).items():
            for a in (c, xp, xm):
                assert a is None or bool(jnp.all(jnp.isfinite(a))), f"{family}.{name}: {a}"


# --- every estimator, unit (hand continuation) and end to end, at both edges ------------
def _normal(t):
    return nd.Normal(t[0] + jnp.array([0.0, 0.5, -1.0]), jnp.exp(t[1]) * jnp.array([1.0, 0.5, 1.5]))


def _logits(t):
    return t[0] + t[1] * jnp.array([1.0, -1.0, 0.5])


def _cat_logits(t):
    return jnp.stack([t[0] * jnp.array([1.0, 0.0, -1.0]), t[1] * jnp.array([0.5, -1.0, 0.0])])


def _smooth(x):
    return jnp.sum(jnp.sin(jnp.asarray(x, jnp.float32)) + 0.1 * jnp.asarray(x, jnp.float32) ** 2)


FAMILIES = {
    "normal": _normal,
    "tfp_normal": lambda t: tfd.Normal(t[0] + jnp.array([0.0, 1.0]), jnp.exp(t[1])),
    "exponential": lambda t: nd.Exponential(jnp.exp(t[0] + jnp.array([0.0, 1.0]))),
    "geometric": lambda t: nd.Geometric(probs=jax.nn.sigmoid(t[0] + jnp.array([0.0, -1.0]))),
    "bernoulli": lambda t: nd.Bernoulli(logits=_logits(t)),
    "tfp_bernoulli": lambda t: tfd.Bernoulli(logits=_logits(t)),
    "categorical": lambda t: nd.Categorical(logits=_cat_logits(t)),
    "bernoulli_float": lambda t: tfd.Bernoulli(logits=_logits(t), dtype=jnp.float32),
    "onehot_float": lambda t: tfd.OneHotCategorical(logits=_cat_logits(t), dtype=jnp.float32),
}
# Every estimator; those that draw their own randomness on every family they support.
# (Poisson sites are left out only because jax.random.poisson refuses non-Threefry keys; MVD's
# Poisson rule draws nothing, and the rule test above covers it.)
CASES = [
    ("MVD", MVD(), ["normal", "tfp_normal", "exponential", "geometric", "bernoulli", "categorical"]),
    ("ARM", ARM(), ["bernoulli", "tfp_bernoulli"]),
    ("DisARM", DisARM(), ["bernoulli", "tfp_bernoulli"]),
    ("GumbelSoftmax", GumbelSoftmax(0.5), ["bernoulli_float", "onehot_float"]),
    ("StraightThrough", StraightThrough(), ["bernoulli_float", "onehot_float"]),
    ("LeaveOneOut", LeaveOneOut(3), ["normal", "categorical"]),
    ("Reparam", Reparam(), ["normal"]),
    ("ScoreFunction", ScoreFunction(), ["normal", "geometric"]),
    ("Baseline", Baseline(ScoreFunction(), 1.0), ["bernoulli"]),
    ("EMABaseline", EMABaseline(ScoreFunction(), 1.0, 0.9), ["categorical"]),
    ("Enum", Enum(), ["bernoulli"]),
]
PAIRS = [pytest.param(est, fam, id=f"{name}-{fam}") for name, est, fams in CASES for fam in fams]
THETA = jnp.array([0.2, -0.3])


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype int64:UserWarning")  # TFP's one-hot sampler
@pytest.mark.parametrize("est,family", PAIRS)
def test_estimator_is_finite_when_every_uniform_is_at_an_edge(est, family):
    make = FAMILIES[family]
    site = dual_site(make, THETA, jnp.array([1.0, -0.7]))
    kont = hand_kont(_smooth)
    E = expectation(lambda t: _smooth(ppl.sample("x", make(t))), estimators={"x": est})

    def both(key):
        out, tan = est.jvp(key, site, kont)
        value, grad = E.value_and_grad(key, THETA)
        return out[0], tan[0], value, grad

    for what, a in zip(("unit value", "unit tangent", "value", "gradient"), jax.jit(jax.vmap(both))(EDGES)):
        assert bool(jnp.all(jnp.isfinite(a))), f"{what} at the (0, 1 - 2^-23) edges: {a}"


# --- CBO and data shuffling ----------------------------------------------------------------
def _quadratic(x, batch):
    return jnp.sum((x - jnp.mean(batch)) ** 2)


@pytest.mark.parametrize("increments", [C.GAUSSIAN, C.RADEMACHER])
def test_cbo_step_is_finite_at_both_edges(increments):
    cbo = C.CBO(_quadratic, data=jnp.arange(6.0), data_batch_size=3, particle_batch_size=4,
                increments=increments)
    x0 = jnp.linspace(-1.0, 1.0, 12).reshape(6, 2)
    state = cbo.init(jax.random.key(0), x0)
    new, info = jax.jit(jax.vmap(lambda k: cbo.step(k, state)))(EDGES)
    assert bool(jnp.all(jnp.isfinite(new.x))) and not bool(jnp.any(info.nonfinite))
    assert not bool(jnp.all(new.x[0] == new.x[1]))   # the two edges moved the particles differently


def test_shuffles_at_both_edges_are_permutations():
    from ppl.transforms.fit import _epoch_permutation
    for k in EDGES:
        np.testing.assert_array_equal(np.sort(np.asarray(_epoch_permutation(k, 3, 10))), np.arange(10))
