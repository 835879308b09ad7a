"""Implicit differentiation called inside an objective program (ADEV differentiates it in
forward mode and transposes): unbiased against jax.grad of the closed-form expectation, with a
biased negative control; and the linear solve's check under vmap (it still fires, once per
vmap level on the whole batch, not once per element)."""
import jax
import jax.numpy as jnp
import numpyro.distributions as nd
import pytest

import ppl
from ppl.estimators import Baseline, ScoreFunction
from ppl.transforms import expectation, implicit
from .._stats import assert_biased, assert_unbiased, estimates

A = jnp.array([[3.0, 0.5, 0.2], [0.5, 2.0, 0.1], [0.2, 0.1, 1.5]])
C = jnp.array([1.0, -1.0, 0.5])
U = 5.0 * jnp.array([0.7, 0.2, -1.1])


def F(x, w, lam):
    """Optimality condition of min_x 0.5 x'(A + lam I)x - w'x."""
    return (A + lam * jnp.eye(3)) @ x - w


def _jacobi_while(x0, w, lam):
    """An inner solver in lax.while_loop (Jacobi sweeps): not reverse-differentiable, so a
    working gradient proves the implicit rule is what differentiates it."""
    M = A + lam * jnp.eye(3)
    d = jnp.diag(M)

    def cond(c):
        return (jnp.linalg.norm(M @ c[0] - w) > 1e-7) & (c[1] < 500)

    def body(c):
        x, i = c
        return x + (w - M @ x) / d, i + 1

    return jax.lax.while_loop(cond, body, (x0, 0))[0]


def _objective(cond_fn, **site):
    root = implicit.custom_root(cond_fn, solve=implicit.CG(tol=1e-7, maxiter=50))(_jacobi_while)

    def obj(theta):
        z = ppl.sample("z", nd.Normal(theta, 1.0), **site)
        x = root(jnp.zeros(3), z * C, jax.nn.softplus(theta))
        return jnp.dot(U, x) ** 2

    return obj


def _exact(theta):
    """E_z (u'(A + softplus(theta) I)^{-1} c z)^2 = alpha(theta)^2 (theta^2 + 1)."""
    alpha = U @ jnp.linalg.solve(A + jax.nn.softplus(theta) * jnp.eye(3), C)
    return alpha ** 2 * (theta ** 2 + 1.0)


THETA = -1.0  # away from the stationary point near 0.4


@pytest.mark.parametrize("site", [{}, pytest.param({"estimator": Baseline(ScoreFunction(), 1.0)},
                                                  marks=pytest.mark.slow)],
                         ids=["reparam", "score-baseline"])
def test_implicit_inside_an_objective_is_unbiased(site):
    """The score-function variant is slow-marked (a second compilation of the same check)."""
    E = expectation(_objective(F, **site))
    out = estimates(lambda k: E.grad(k, THETA), 2000, seed=11)
    exact = jax.grad(_exact)(THETA)
    assert_unbiased(out, exact, 0.06 * abs(float(exact)), f"implicit in objective ({site})")


def test_wrong_optimality_condition_is_caught():
    """Negative control: an F blind to lam's effect (its dF/dlam is zero) gives a biased gradient."""
    def F_blind(x, w, lam):
        return A @ x + jax.lax.stop_gradient(lam) * x - w

    E = expectation(_objective(F_blind))
    out = estimates(lambda k: E.grad(k, THETA), 2000, seed=11)
    assert_biased(out, jax.grad(_exact)(THETA), "implicit with a blind F")


def _ill_root(maxiter, top=6.0, tol=1e-8):
    M = jnp.diag(jnp.logspace(0, top, 8))
    return implicit.custom_root(lambda x, t: M @ x - t, solve=implicit.CG(tol=tol, maxiter=maxiter))(
        lambda x0, t: jnp.linalg.solve(M, t))


def _vmapped_grad(root, n):
    def obj(theta):
        z = ppl.sample("z", nd.Normal(theta, 1.0))
        return jnp.sum(z * root(jnp.zeros(8), z ** 2 * jnp.linspace(1.0, 2.0, 8)))  # both solves vary per key

    E = expectation(obj)
    return jax.jit(jax.vmap(lambda k: E.grad(k, 0.3))), jax.random.split(jax.random.key(0), n)


def test_check_fires_under_vmap_with_the_batch_summarized():
    f, keys = _vmapped_grad(_ill_root(2), 16)
    with pytest.raises(Exception, match=r"CG did not converge in \d+ of 16 batch elements \(vmap\); "
                                        r"worst at index \(\d+,\):.*raise `maxiter`"):
        jax.block_until_ready(f(keys))
    # (that a converged solve passes the check under vmap is shown by the unbiasedness tests
    # above, which run the objective under jit(vmap) with the check on)


def test_root_tol_check_fires_under_vmap():
    root = implicit.custom_root(lambda x, t: x - t, root_tol=1e-6)(lambda x0, t: t + jnp.where(t > 0.5, 1.0, 0.0))
    with pytest.raises(Exception, match=r"not a root.*in 2 of 4 batch elements \(vmap\)"):
        jax.block_until_ready(jax.jit(jax.vmap(lambda t: root(0.0, t)))(jnp.array([0.1, 0.7, 0.2, 0.9])))


def _callbacks(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "debug_callback"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _callbacks(sub)
    return n


def test_the_check_is_staged_once_whatever_the_batch():
    """The staged program holds the same number of check callbacks at batch 4 and 64 (JAX's own
    rule for debug.callback unrolls one per element, so compile time grew with the batch)."""
    counts = []
    for n in (4, 64):
        f, keys = _vmapped_grad(_ill_root(50, top=1.0, tol=1e-5), n)
        counts.append(_callbacks(jax.make_jaxpr(f)(keys).jaxpr))
    assert counts[0] == counts[1] >= 1
