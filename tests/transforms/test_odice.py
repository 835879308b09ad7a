"""Orthogonal-gradient updates: orthogonality, reduction identities, hand formula, zero g_f."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from ppl.transforms import odice

GAMMA, LAM = 0.9, 0.7


def mlp(params, s):
    h = jnp.tanh(s @ params["w1"] + params["b1"])
    return (h @ params["w2"] + params["b2"])[..., 0]


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {"w1": 0.5 * jax.random.normal(k1, (8,)).reshape(2, 4), "b1": jnp.zeros(4),
            "w2": 0.5 * jax.random.normal(k2, (4,)).reshape(4, 1), "b2": jnp.zeros(1)}


def batch():
    s = jnp.linspace(-1.0, 1.0, 12).reshape(6, 2)
    return {"s": s, "s_next": jnp.roll(s, 1, axis=0) * 0.9, "r": jnp.linspace(0.0, 1.0, 6)}


def f_star(x):  # Pearson chi^2 conjugate, as in ODICE
    w = jnp.maximum(x / 2 + 1, 0.0)
    return x * w - (w - 1) ** 2


def dice(p_fwd, p_bwd, b):
    """lam E[f*(r + gamma V(s') - V(s))] with V(s) from p_fwd and V(s') from p_bwd."""
    return LAM * jnp.mean(f_star(b["r"] + GAMMA * mlp(p_bwd, b["s_next"]) - mlp(p_fwd, b["s"])))


def init_term(p, b):
    return (1 - LAM) * jnp.mean(mlp(p, b["s"]))


def test_matches_hand_formula_on_a_small_network(key):
    params, b = init_params(key), batch()
    value, g = jax.jit(odice.orthogonal_grad(dice, eta=0.5, extra=init_term))(params, b)
    # by hand: flatten every parameter together, project, add the extra term's gradient
    gf, unravel = ravel_pytree(jax.grad(dice, argnums=0)(params, params, b))
    gb, _ = ravel_pytree(jax.grad(dice, argnums=1)(params, params, b))
    ge, _ = ravel_pytree(jax.grad(init_term)(params, b))
    gf, gb, ge = map(np.asarray, (gf, gb, ge))
    hand = gf + 0.5 * (gb - (gb @ gf) / (gf @ gf) * gf) + ge
    np.testing.assert_allclose(ravel_pytree(g)[0], hand, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(value, dice(params, params, b) + init_term(params, b), rtol=1e-6)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(params)


def test_projected_backward_component_is_orthogonal_to_forward(key):
    params, b = init_params(key), batch()
    _, grads = odice.forward_backward_grad(dice)(params, b)
    for eta in (0.3, 1.0, 2.0):
        g = odice.project(grads.forward, grads.backward, eta)
        perp = jax.tree_util.tree_map(lambda u, f: (u - f) / eta, g, grads.forward)
        gf = ravel_pytree(grads.forward)[0]
        cos = ravel_pytree(perp)[0] @ gf / (jnp.linalg.norm(ravel_pytree(perp)[0]) *
                                            jnp.linalg.norm(gf))
        assert abs(float(cos)) < 1e-5


def test_orthogonal_backward_gives_the_true_gradient():
    """Forward and backward terms on disjoint parameters: g_b is orthogonal to g_f, so eta = 1
    reproduces the true gradient of objective(params, params)."""

    def obj(pf, pb, x):
        return jnp.sum(pf["a"] * x) ** 2 + jnp.sum(jnp.sin(pb["b"] * x))

    params = {"a": jnp.array([0.3, -0.2, 0.5]), "b": jnp.array([1.0, 2.0, -1.0])}
    x = jnp.array([0.5, 1.5, -2.0])
    _, g = odice.orthogonal_grad(obj, eta=1.0)(params, x)
    true = jax.grad(lambda p: obj(p, p, x))(params)
    for k in params:
        np.testing.assert_allclose(g[k], true[k], rtol=1e-6)
    # eta = 0 is the semi-gradient
    _, semi = odice.orthogonal_grad(obj, eta=0.0)(params, x)
    fwd = jax.grad(obj, argnums=0)(params, params, x)
    for k in params:
        np.testing.assert_allclose(semi[k], fwd[k], rtol=1e-6)


def test_zero_forward_gradient_gives_eta_times_backward_without_nan():
    def obj(pf, pb, x):  # V(s) term vanishes: forward gradient is exactly zero
        return 0.0 * jnp.sum(pf) + jnp.sum(pb ** 2 * x)

    p, x = jnp.array([1.0, -2.0]), jnp.array([3.0, 4.0])
    _, g = odice.orthogonal_grad(obj, eta=0.7)(p, x)
    np.testing.assert_allclose(g, 0.7 * 2 * p * x)
    assert np.all(np.isfinite(g))


def test_optax_transformation_chains_and_matches_the_function(key):
    params, b = init_params(key), batch()
    fb = odice.forward_backward_grad(dice)
    opt = optax.chain(odice.orthogonalize(eta=0.5), optax.sgd(0.1))
    state = opt.init(params)
    _, grads = fb(params, b)
    updates, state = jax.jit(opt.update)(grads, state, params)
    _, g = odice.orthogonal_grad(dice, eta=0.5)(params, b)
    for k in params:
        np.testing.assert_allclose(updates[k], -0.1 * g[k], rtol=1e-5, atol=1e-8)
    # eta as an injected hyperparameter: a traced value, changing it does not retrace
    opt2 = optax.inject_hyperparams(odice.orthogonalize)(eta=0.5)
    s2 = opt2.init(params)
    u2, _ = jax.jit(opt2.update)(grads, s2, params)
    for k in params:
        np.testing.assert_allclose(u2[k], g[k], rtol=1e-5, atol=1e-8)
    with pytest.raises(TypeError, match="must be odice.ForwardBackward"):
        odice.orthogonalize().update(grads.forward, optax.EmptyState())
