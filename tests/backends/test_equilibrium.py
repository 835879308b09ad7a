"""Holomorphic equilibrium propagation (``ppl.backends.equilibrium``) against implicit
differentiation of the same fixed point (``ppl.transforms.implicit``, itself checked here
against unrolled backprop through the iterations).

- Symmetric feedback (an energy-based network, ``J = dpre/da`` symmetric): the EP estimate
  aligns with the implicit gradient (cosine > 0.99 at small beta) and its error shrinks
  as the number of nudges N grows (``O(beta^N)`` inside the radius of analyticity).
- Negative control: independent (asymmetric) feedback weights keep the cosine well below 1
  for every N and beta: EP's bias is the Jacobian's asymmetry, not the nudge size.
- Jacobian homeostasis: the probe estimate is unbiased for ``||J - J^T||^2 / (2 dim)`` (suite
  statistics helpers); descending it restores EP's alignment on the asymmetric network.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.backends.equilibrium import FixedPointNet

from .._stats import assert_biased, assert_unbiased, power_limit

H, DIN, C, B = 12, 5, 3, 8


def _pre(sym):
    def pre(a, p, x):
        W = 0.5 * (p["W"] + p["W"].T) if sym else p["W"]
        return a @ W + x @ p["U"] + p["b"]
    return pre


def loss(a, p, y):  # softmax cross-entropy written holomorphically (no max shift)
    o = a @ p["R"] + p["c"]
    return jnp.log(jnp.sum(jnp.exp(o), -1)) - jnp.sum(y * o, -1)


def setup():
    k = jax.random.split(jax.random.key(0), 5)
    p = {"W": 0.15 * jax.random.normal(k[0], (H, H)), "U": 0.5 * jax.random.normal(k[1], (DIN, H)),
         "b": jnp.full(H, 0.1), "R": 0.5 * jax.random.normal(k[2], (H, C)), "c": jnp.zeros(C)}
    x = jax.random.normal(k[3], (B, DIN))
    y = jax.nn.one_hot(jax.random.randint(k[4], (B,), 0, C), C)
    return p, x, y, jnp.zeros((B, H))


def flat(g):
    return jnp.concatenate([v.ravel() for v in jax.tree_util.tree_leaves(g)])


def cos(a, b):
    a, b = flat(a), flat(b)
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def rel_err(a, b):
    return float(jnp.linalg.norm(flat(a) - flat(b)) / jnp.linalg.norm(flat(b)))


def sweep(net, p, x, y, a0, cases):
    """The implicit gradient, unrolled backprop, and EP at each (beta, n), in one compilation."""
    @jax.jit
    def run(p):
        _, gi = net.implicit_gradient(a0, p, x, y)
        gu = jax.grad(lambda q: jnp.mean(loss(net.solve(a0, q, x), q, y)))(p)
        return gi, gu, {(b, n): net.ep_gradient(a0, p, x, y, b, n)[1] for b, n in cases}
    return run(p)


def test_symmetric_network_ep_matches_the_implicit_gradient_and_converges_in_n():
    p, x, y, a0 = setup()
    net = FixedPointNet(_pre(True), loss, iters=60)
    gi, gu, ep = sweep(net, p, x, y, a0, [(b, n) for b in (0.05, 0.2) for n in (1, 2, 4, 6)])
    # the reference itself: implicit = unrolled backprop through the converged iterations
    assert rel_err(gi, gu) < 1e-4
    assert cos(ep[(0.05, 1)], gi) > 0.99
    for n in (2, 4, 6):
        assert cos(ep[(0.05, n)], gi) > 0.999, n
    for b in (0.05, 0.2):   # converges as N grows (the Cauchy rule's error is O(beta^N))
        errs = [rel_err(ep[(b, n)], gi) for n in (1, 2, 4, 6)]
        assert errs[0] > errs[1] > errs[2] > errs[3] and errs[0] > 10 * errs[2], (b, errs)
    assert rel_err(ep[(0.05, 4)], gi) < 2e-4
    assert float(net.asymmetry(net.solve(a0, p, x), p, x)) < 1e-10


def test_asymmetric_feedback_lowers_alignment_and_homeostasis_restores_it():
    p, x, y, a0 = setup()
    net = FixedPointNet(_pre(False), loss, iters=60)
    gi, _, ep = sweep(net, p, x, y, a0, [(0.05, 1), (0.05, 4), (0.5, 2), (0.5, 6)])
    cosines = {k: cos(g, gi) for k, g in ep.items()}
    assert max(cosines.values()) < 0.95, cosines   # negative control: no N or beta fixes it

    # descend the homeostatic loss alone on W (fresh probes each step)
    a = net.solve(a0, p, x)
    before = float(net.asymmetry(a, p, x))

    @jax.jit
    def step(q, key):
        g = jax.grad(lambda w: net.homeostatic_loss(a, {**q, "W": w}, x, key, probes=4))(q["W"])
        return {**q, "W": q["W"] - 0.5 * g}
    q = p
    for key in jax.random.split(jax.random.key(1), 150):
        q = step(q, key)
    after = float(net.asymmetry(net.solve(a0, q, x), q, x))
    assert after < 0.01 * before, (before, after)
    gi_q, _, ep_q = sweep(net, q, x, y, a0, [(0.05, 4)])
    assert cos(ep_q[(0.05, 4)], gi_q) > 0.99


@pytest.mark.statistical
def test_homeostatic_loss_is_unbiased_for_the_jacobian_asymmetry():
    p, x, y, a0 = setup()
    net = FixedPointNet(_pre(False), loss, iters=60)
    a = net.solve(a0, p, x)
    exact = float(net.asymmetry(a, p, x))
    draws = jax.jit(jax.vmap(lambda k: net.homeostatic_loss(a, p, x, k)))(jax.random.split(jax.random.key(2), 4000))
    assert_unbiased(np.asarray(draws)[:, None], np.array([exact]), power_limit(exact), "homeostatic loss")
    # negative control: dropping the eps^T J^2 eps term estimates ||J||_F^2 / dim instead
    wrong = jax.jit(jax.vmap(lambda k: net.homeostatic_loss(a, p, x, k) + _jj(net, a, p, x, k)))(
        jax.random.split(jax.random.key(2), 4000))
    assert_biased(np.asarray(wrong)[:, None], np.array([exact]), "homeostasis without the J^2 term")


def _jj(net, a, p, x, key):
    eps = jax.random.normal(key, (1,) + a.shape)[0]
    f = lambda v: net.pre(v, p, x)  # noqa: E731
    return jnp.mean(jnp.sum(eps * jax.jvp(f, (a,), (jax.jvp(f, (a,), (eps,))[1],))[1], -1)) / a.shape[-1]


def test_bad_arguments_are_refused():
    p, x, y, a0 = setup()
    net = FixedPointNet(_pre(True), loss)
    with pytest.raises(ValueError, match="n .the number of nudges"):
        net.ep_gradient(a0, p, x, y, 0.1, 0)
    with pytest.raises(ValueError, match="beta is a positive float"):
        net.ep_gradient(a0, p, x, y, -0.1, 2)
    with pytest.raises(ValueError, match="iters"):
        FixedPointNet(_pre(True), loss, iters=0)
    for dt in (0.0, 1.5):
        with pytest.raises(ValueError, match="dt"):
            FixedPointNet(_pre(True), loss, dt=dt)
    # damping changes the path, not the fixed point
    a1 = FixedPointNet(_pre(True), loss, iters=60).solve(a0, p, x)
    a_damped = FixedPointNet(_pre(True), loss, iters=200, dt=0.6).solve(a0, p, x)
    np.testing.assert_allclose(a_damped, a1, atol=1e-5)
    with pytest.raises(TypeError, match="callables"):
        FixedPointNet(_pre(True), "xent")
