"""diffGrad against its definition (a hand-written numpy step) and the paper's 1-D functions."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppl.backends import optim


def _numpy_diffgrad(grads, lr, b1, b2, eps, wd, x0):
    """The v2 update written out: friction sigmoid(|g_{t-1} - g_t|) on Adam's step, g_0 = 0."""
    x, m, v, g_prev = x0.copy(), np.zeros_like(x0), np.zeros_like(x0), np.zeros_like(x0)
    for t, g in enumerate(grads, start=1):
        g = g + wd * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        xi = 1 / (1 + np.exp(-np.abs(g_prev - g)))
        x = x - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * xi * m / (np.sqrt(v) + eps)
        g_prev = g
    return x


@pytest.mark.parametrize("wd", [0.0, 0.3])
def test_matches_the_definition(wd):
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(6, 5)) * np.array([0.01, 0.1, 1.0, 3.0, 10.0])  # frictions far from 0.5 and 1
    x0 = rng.normal(size=5)
    lr, b1, b2, eps = 0.07, 0.8, 0.95, 1e-3
    with jax.enable_x64(True):
        opt = optim.diffgrad(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd)
        x = jnp.asarray(x0)
        s = opt.init(x)
        for g in grads:
            u, s = opt.update(jnp.asarray(g), s, x)
            x = optax.apply_updates(x, u)
        np.testing.assert_allclose(np.asarray(x), _numpy_diffgrad(grads, lr, b1, b2, eps, wd, x0), rtol=1e-12)
        # the friction is not constant (the v1 aliasing bug made it 0.5): Adam at half the rate differs
        half = optax.chain(optax.scale_by_adam(b1, b2, eps=0.0), optax.scale(-lr / 2))
        assert not np.allclose(np.asarray(u), np.asarray(half.update(jnp.asarray(grads[-1]), half.init(x))[0]))


def _f1_grad(x):
    return jnp.where(x <= 0, 2 * x + 0.6, 2 * x - 0.4)


def _f2_grad(x):
    return jnp.where(x <= -0.9, -40.0, x * jnp.cos(8 * x) + jnp.sin(8 * x) + 3 * x * x)


def _final_x(opt, grad_fn, steps=299, x0=-1.0):
    """The reference notebook's loop: 300 iterates from x0 = -1, i.e. 299 updates."""
    def body(carry, _):
        x, s = carry
        u, s = opt.update(grad_fn(x), s, x)
        return (optax.apply_updates(x, u), s), None
    x = jnp.asarray(x0)
    (x, _), _ = jax.lax.scan(body, (x, opt.init(x)), None, length=steps)
    return float(x)


@pytest.mark.parametrize("grad_fn, adam_ref, diffgrad_ref", [(_f1_grad, 0.200, -0.300), (_f2_grad, 0.000, -0.812)],
                         ids=["F1", "F2"])
def test_paper_1d_functions(grad_fn, adam_ref, diffgrad_ref):
    """lr 0.1, beta1 0.95, beta2 0.999: Adam stops at the local minimum, diffGrad reaches the global
    one. The notebook's Adam uses sqrt(v_hat + eps): optax's eps_root."""
    with jax.enable_x64(True):
        adam = optax.adam(0.1, b1=0.95, b2=0.999, eps=0.0, eps_root=1e-8)
        dg = optim.diffgrad(0.1, b1=0.95, b2=0.999, eps=1e-8)
        assert abs(_final_x(adam, grad_fn) - adam_ref) < 5e-3
        assert abs(_final_x(dg, grad_fn) - diffgrad_ref) < 5e-3
