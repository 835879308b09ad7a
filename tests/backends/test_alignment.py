"""Hessian-alignment penalties against dense Hessians (jax.hessian) in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.backends import alignment as AL

from .._stats import Z


def _two_envs(seed=0):
    """A featurizer phi (3 -> 4, tanh) and a logistic head on two environments."""
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(20, 3)), rng.normal(size=(20, 3)) + 0.5]
    ys = [(rng.random(20) < 0.6).astype(float), (rng.random(20) < 0.3).astype(float)]
    phi = jnp.asarray(rng.normal(size=(3, 4)) * 0.7)
    head = {"w": jnp.asarray(rng.normal(size=4)), "b": jnp.asarray(0.3)}

    def risks_of(phi):
        def risks(h):
            out = []
            for x, y in zip(xs, ys):
                z = jnp.tanh(x @ phi) @ h["w"] + h["b"]
                out.append(jnp.mean(jax.nn.softplus(z) - y * z))
            return jnp.stack(out)
        return risks

    return risks_of, phi, head


def _dense_hgp(risks, head, alpha, beta):
    x, unravel = jax.flatten_util.ravel_pytree(head)
    R = lambda v: risks(unravel(v))
    G = jax.jacrev(R)(x)
    H = jax.hessian(R)(x)                       # (E, d, d)
    Hbar = jax.hessian(lambda v: R(v).mean())(x)
    gbar = jax.lax.stop_gradient(G.mean(0))
    hbar = jax.lax.stop_gradient(Hbar @ G.mean(0))
    hg = jnp.einsum("eij,ej->ei", H, G)
    return jnp.mean(alpha * jnp.sum((hg - hbar) ** 2, -1) + beta * jnp.sum((G - gbar) ** 2, -1))


def test_hgp_penalty_and_its_gradients_match_dense_hessians():
    with jax.enable_x64(True):
        risks_of, phi, head = _two_envs()
        got = jax.jit(lambda ph, h: AL.hgp_penalty(risks_of(ph), h, alpha=2.0, beta=0.5))(phi, head)
        want = jax.jit(lambda ph, h: _dense_hgp(risks_of(ph), h, 2.0, 0.5))(phi, head)
        assert float(got) == pytest.approx(float(want), rel=1e-10)
        assert float(got) > 1e-6  # not a trivial zero
        # differentiable in the head and, through the closure, in the featurizer
        g_got = jax.jit(jax.grad(lambda ph, h: AL.hgp_penalty(risks_of(ph), h, alpha=2.0, beta=0.5), argnums=(0, 1)))(phi, head)
        g_want = jax.jit(jax.grad(lambda ph, h: _dense_hgp(risks_of(ph), h, 2.0, 0.5), argnums=(0, 1)))(phi, head)
        for a, b in zip(jax.tree_util.tree_leaves(g_got), jax.tree_util.tree_leaves(g_want)):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


def test_hgp_penalty_vanishes_for_identical_environments():
    with jax.enable_x64(True):
        risks_of, phi, head = _two_envs()
        same = lambda h: jnp.stack([risks_of(phi)(h)[0]] * 3)
        assert float(jax.jit(lambda h: AL.hgp_penalty(same, h))(head)) == pytest.approx(0.0, abs=1e-20)


def test_hutchinson_penalty_is_exact_for_diagonal_hessians(key):
    """Separable risks have diagonal Hessians: Hutchinson's diagonal is exact for any probes."""
    with jax.enable_x64(True):
        c = jnp.asarray(np.random.default_rng(3).random((2, 5)) + 0.2)
        risks = lambda w: jnp.sum(c * (jnp.log1p(jnp.exp(w)) + 0.3 * w ** 2), axis=1)
        w = jnp.linspace(-1.0, 1.0, 5)
        s = jax.nn.sigmoid(w)
        D = c * (s * (1 - s) + 0.6)                 # exact diag H_e
        G = c * (s + 0.6 * w)
        want = np.mean(1.5 * np.sum((D - D.mean(0)) ** 2, -1) + 0.2 * np.sum((G - G.mean(0)) ** 2, -1))
        got = jax.jit(lambda w, k: AL.hutchinson_penalty(risks, w, key=k, num_samples=3, alpha=1.5, beta=0.2))(w, key)
        assert float(got) == pytest.approx(float(want), rel=1e-10)


def test_hessian_diagonal_is_unbiased(key):
    with jax.enable_x64(True):
        B = np.random.default_rng(4).normal(size=(6, 6))
        A = B @ B.T
        f = lambda x: 0.5 * x @ A @ x + jnp.sum(jnp.sin(x))
        x0 = jnp.linspace(0.1, 0.6, 6)
        H = np.asarray(jax.hessian(f)(x0))
        n = 2000
        est = np.asarray(jax.jit(lambda x, k: AL.hessian_diagonal(f, x, key=k, num_samples=n))(x0, key))
        se = np.sqrt((np.sum(H ** 2, 1) - np.diag(H) ** 2) / n)  # exact per-coordinate standard error
        assert np.all(np.abs(est - np.diag(H)) <= Z * se)
        assert np.all(se < 0.1 * np.abs(np.diag(H)))  # power guard
        # negative control: the off-by-one-probe bug z * H z' (independent probes) is caught
        z = jax.random.rademacher(key, (2, n, 6), jnp.float64)
        wrong = np.mean(np.asarray(z[0]) * (np.asarray(z[1]) @ H), 0)
        assert np.any(np.abs(wrong - np.diag(H)) > Z * se)


def test_penalties_refuse_bad_input(key):
    risks = lambda w: jnp.stack([jnp.sum(w ** 2), jnp.sum(w)])
    with pytest.raises(ValueError, match="alpha=-1.0"):
        AL.hgp_penalty(risks, jnp.ones(2), alpha=-1.0)
    with pytest.raises(ValueError, match="per-environment risks"):
        AL.hgp_penalty(lambda w: jnp.sum(w), jnp.ones(2))
    with pytest.raises(ValueError, match="num_samples"):
        AL.hutchinson_penalty(risks, jnp.ones(2), key=key, num_samples=0)
