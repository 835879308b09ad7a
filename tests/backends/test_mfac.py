"""M-FAC: the Woodbury update with its running Gram matrix equals the dense inverse of the
damped empirical Fisher of the window (float64, d = 1000, m = 32, as the reference's own test)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppl.backends import optim


def _dense(window, g, damping):
    m, d = window.shape
    fisher = damping * np.eye(d) + window.T @ window / m
    return np.linalg.solve(fisher, g)


@pytest.mark.parametrize("n_grads", [32, 45])  # a full window, and one that wrapped around
def test_fast_update_equals_dense_inverse(n_grads):
    d, m, damping = 1000, 32, 1e-3
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(n_grads, d)) * rng.uniform(0.1, 3.0, size=(n_grads, 1))
    with jax.enable_x64(True):
        t = optim.scale_by_mfac(num_grads=m, damping=damping)
        s = t.init(jnp.zeros(d))
        update = jax.jit(t.update)
        for g in grads:
            u, s = update(jnp.asarray(g), s)
        expected = _dense(grads[-m:], grads[-1], damping)
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-8, atol=1e-8 * np.abs(expected).max())
        window = np.asarray(s.grads)
        np.testing.assert_allclose(np.asarray(s.gram), window @ window.T, rtol=1e-10)


def test_partial_window_and_pytree_params():
    """Before the window fills, the empty rows drop out; parameters may be any pytree."""
    rng = np.random.default_rng(1)
    damping, m = 0.5, 8
    gs = [{"a": rng.normal(size=(3, 2)), "b": rng.normal(size=4)} for _ in range(3)]
    with jax.enable_x64(True):
        t = optim.scale_by_mfac(num_grads=m, damping=damping)
        s = t.init(jax.tree_util.tree_map(jnp.zeros_like, gs[0]))
        for g in gs:
            u, s = t.update(jax.tree_util.tree_map(jnp.asarray, g), s)
        flat = np.stack([np.concatenate([g["a"].ravel(), g["b"]]) for g in gs])
        window = np.concatenate([flat, np.zeros((m - 3, flat.shape[1]))])
        expected = _dense(window, flat[-1], damping)
        got = np.concatenate([np.asarray(u["a"]).ravel(), np.asarray(u["b"])])
        np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_momentum_and_weight_decay_as_the_reference():
    """mfac: g + wd * p, u = F^-1 g, v = mu v + (1 - mu) u, p -= lr v."""
    rng = np.random.default_rng(2)
    lr, mu, wd, damping, m = 0.01, 0.7, 0.1, 0.3, 4
    with jax.enable_x64(True):
        opt = optim.mfac(lr, num_grads=m, damping=damping, momentum=mu, weight_decay=wd)
        pre = optim.scale_by_mfac(num_grads=m, damping=damping)
        p = jnp.asarray(rng.normal(size=5))
        s, sp, v = opt.init(p), pre.init(p), np.zeros(5)
        for _ in range(6):
            g = jnp.asarray(rng.normal(size=5))
            upd, s = opt.update(g, s, p)
            u, sp = pre.update(g + wd * p, sp)
            v = mu * v + (1 - mu) * np.asarray(u)
            np.testing.assert_allclose(np.asarray(upd), -lr * v, rtol=1e-10)
            p = optax.apply_updates(p, upd)


def test_wrong_parameter_size_is_refused():
    t = optim.scale_by_mfac(num_grads=4, damping=1.0)
    s = t.init(jnp.zeros(3))
    with pytest.raises(ValueError, match="entries"):
        t.update(jnp.ones(5), s)
