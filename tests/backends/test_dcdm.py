"""DCDM (ppl.backends.dcdm) against its definition: with the identity direction it is CG (iterates
equal jax.scipy's cg), with the exact inverse it converges in one step; the loss is
scale-invariant and zero exactly at the inverse; Lanczos gives the operator's eigenpairs; as a
solver config it gives implicit differentiation the same gradient as CG; a briefly trained
network needs fewer iterations than CG."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.backends.dcdm import (DCDM, dcdm, dcdm_loss, direction_net_apply, direction_net_init,
                               poisson_2d, ritz_vectors, train_direction_net, training_rhs)
from ppl.transforms import implicit


def _dense(matvec, n):
    return np.asarray(jax.jacfwd(lambda u: matvec(u.reshape(n, n)).reshape(-1))(jnp.zeros(n * n)))


def test_identity_direction_is_conjugate_gradients():
    with jax.enable_x64(True):
        n = 8
        A = poisson_2d(n, jnp.float64)
        b = jax.random.normal(jax.random.key(0), (n, n))
        for k in (1, 3, 10):
            x_cg, _ = jax.scipy.sparse.linalg.cg(A, b, maxiter=k, tol=0.0)
            res = dcdm(A, b, lambda r: r, tol=1e-30, maxiter=k)
            assert int(res.iterations) == k
            np.testing.assert_allclose(res.x, x_cg, rtol=1e-10, atol=1e-12)
        res = dcdm(A, b, lambda r: r, tol=1e-10, maxiter=500)
        assert bool(res.converged) and int(res.iterations) <= n * n
        hist = np.asarray(res.residuals)
        assert hist[0] == 1.0 and hist[int(res.iterations)] <= 1e-10
        assert np.all(np.isnan(hist[int(res.iterations) + 1:]))
        np.testing.assert_allclose(res.x, np.linalg.solve(_dense(A, n), b.reshape(-1)).reshape(n, n), rtol=1e-8)


def test_exact_inverse_direction_converges_in_one_step_and_zeroes_the_loss():
    with jax.enable_x64(True):
        n = 6
        A = poisson_2d(n, jnp.float64)
        inv = np.linalg.inv(_dense(A, n))
        exact = lambda r: (inv @ r.reshape(-1)).reshape(n, n)
        b = jax.random.normal(jax.random.key(1), (n, n))
        res = dcdm(A, b, exact, tol=1e-10, maxiter=20)
        assert int(res.iterations) == 1
        bs = jax.random.normal(jax.random.key(2), (5, n, n))
        assert float(dcdm_loss(exact, A, bs)) < 1e-20
        assert float(dcdm_loss(lambda r: -3.0 * exact(r), A, bs)) < 1e-20  # scale-invariant
        identity_loss = float(dcdm_loss(lambda r: r, A, bs))
        assert identity_loss > 0.01 and np.isclose(float(dcdm_loss(lambda r: 7.0 * r, A, bs)), identity_loss)


def test_ritz_vectors_are_eigenpairs_and_training_rhs_are_unit_norm():
    with jax.enable_x64(True):
        n = 6
        A = poisson_2d(n, jnp.float64)
        vals, vecs = ritz_vectors(A, (n, n), n * n, key=jax.random.key(0))  # full Lanczos: exact
        np.testing.assert_allclose(vals, np.linalg.eigvalsh(_dense(A, n)), atol=1e-10)
        np.testing.assert_allclose(jax.vmap(A)(vecs), vals[:, None, None] * vecs, atol=1e-9)
        b = training_rhs(jax.random.key(1), vecs, 7)
        assert b.shape == (7, n, n)
        np.testing.assert_allclose(jnp.sqrt(jnp.sum(b ** 2, axis=(1, 2))), 1.0, rtol=1e-12)


def test_as_implicit_solver_gives_the_cg_gradient():
    with jax.enable_x64(True):
        n = 6
        A = poisson_2d(n, jnp.float64)
        F = lambda x, s: A(x) - s ** 2  # the Poisson solution as a function of a source parameter

        def inner(x0, s):
            return dcdm(A, s ** 2, lambda r: r, tol=1e-12, maxiter=500).x

        s = jax.random.normal(jax.random.key(0), (n, n))
        loss = lambda solve: (lambda s: jnp.sum(jnp.sin(implicit.custom_root(F, solve=solve)(inner)(jnp.zeros((n, n)), s))))
        g_dcdm = jax.grad(loss(DCDM(lambda r: r, tol=1e-10)))(s)
        g_cg = jax.grad(loss(implicit.CG(tol=1e-10, maxiter=500)))(s)
        np.testing.assert_allclose(g_dcdm, g_cg, rtol=1e-7, atol=1e-10)
        with pytest.raises(Exception, match="DCDM did not converge"):
            jax.grad(loss(DCDM(lambda r: r, tol=1e-10, maxiter=2)))(s)


def test_trained_network_beats_cg_on_a_small_grid():
    """200 Adam steps on 16 x 16 already cut the iterations about 4x (the example does 64 x 64)."""
    n = 16
    A = poisson_2d(n)
    _, ritz = ritz_vectors(A, (n, n), 40, key=jax.random.key(0))
    params, losses = train_direction_net(direction_net_init(jax.random.key(1)), A, ritz, jax.random.key(2),
                                         steps=200, batch=16)
    assert losses.shape == (200,) and float(jnp.mean(losses[-20:])) < 0.5 * float(jnp.mean(losses[:20]))
    b = jax.random.normal(jax.random.key(3), (4, n, n))
    net = jax.vmap(lambda b: dcdm(A, b, lambda r: direction_net_apply(params, r), tol=1e-4, maxiter=400))(b)
    cg = jax.vmap(lambda b: dcdm(A, b, lambda r: r, tol=1e-4, maxiter=400))(b)
    assert bool(jnp.all(net.converged)) and bool(jnp.all(cg.converged))
    assert float(jnp.mean(net.iterations)) < 0.5 * float(jnp.mean(cg.iterations))


def test_stall_guard():
    """A direction that ignores the residual stalls the paper's iteration after one step; the
    guard falls back to steepest descent and converges."""
    with jax.enable_x64(True):
        n = 6
        A = poisson_2d(n, jnp.float64)
        b = jax.random.normal(jax.random.key(0), (n, n))
        const = lambda r: jnp.ones_like(r)
        pure = dcdm(A, b, const, tol=1e-6, maxiter=50, stall_ratio=0.0)
        assert not bool(pure.converged) and int(pure.fallbacks) == 0
        hist = np.asarray(pure.residuals)
        assert hist[2] == hist[50]  # no progress after the first step
        guarded = dcdm(A, b, const, tol=1e-6, maxiter=2000)
        assert bool(guarded.converged) and int(guarded.fallbacks) > 0
        ident = dcdm(A, b, lambda r: r, tol=1e-6, maxiter=200)
        assert int(ident.fallbacks) == 0  # CG never triggers it


@pytest.mark.parametrize("call, match", [
    (lambda: dcdm(poisson_2d(4), jnp.ones((4, 4)), lambda r: r, tol=0.0), r"dcdm\(tol=0.0\)"),
    (lambda: dcdm(poisson_2d(4), jnp.ones((4, 4)), lambda r: r, maxiter=0), r"dcdm\(maxiter=0\)"),
    (lambda: dcdm(poisson_2d(4), jnp.ones((4, 4)), lambda r: r, x0=jnp.ones(3)), "x0 has shape"),
    (lambda: poisson_2d(1), r"poisson_2d\(n=1\)"),
    (lambda: poisson_2d(4)(jnp.ones((3, 3))), r"expected an array ending in \(4, 4\)"),
    (lambda: ritz_vectors(poisson_2d(4), (4, 4), 17, key=jax.random.key(0)), r"num=17"),
    (lambda: DCDM(lambda r: r, tol=-1.0), r"DCDM\(tol=-1.0\)"),
    (lambda: train_direction_net({}, poisson_2d(4), jnp.ones((2, 4, 4)), jax.random.key(0), steps=0),
     r"train_direction_net\(steps=0\)"),
    (lambda: dcdm(poisson_2d(4), jnp.ones((4, 4)), lambda r: r, stall_ratio=2.0), r"stall_ratio=2.0"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_finite_input_is_refused_or_reported():
    A = poisson_2d(4)
    b = jnp.ones((4, 4)).at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="dcdm: b contains NaN"):
        dcdm(A, b, lambda r: r)
    res = jax.jit(lambda b: dcdm(A, b, lambda r: r))(b)  # traced: no eager check, nothing claims success
    assert not bool(res.converged) and bool(jnp.isnan(res.residuals[0]))


def test_example_runs(capsys):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[2] / "examples" / "dcdm_poisson.py"
    spec = importlib.util.spec_from_file_location("dcdm_poisson", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--quick"])
    assert "paper:" in capsys.readouterr().out
    assert set(res) == {"training distribution", "white noise", "smooth source"}
    assert all(ok for _, _, ok in res.values())  # every solve converged
