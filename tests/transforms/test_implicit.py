"""Implicit differentiation: closed forms, unrolled agreement, finite differences, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.transforms import implicit

SOLVERS = [
    implicit.CG(tol=1e-10, maxiter=200),
    implicit.NormalCG(tol=1e-10, maxiter=500),
    implicit.GMRES(tol=1e-10, maxiter=20, restart=10),
    implicit.BiCGSTAB(tol=1e-10, maxiter=200),
]
IDS = [type(s).__name__ for s in SOLVERS]


def _ridge_problem():
    rng = np.random.default_rng(1)
    return rng.normal(size=(12, 4)), rng.normal(size=12)


def _newton_while(F, tol=1e-12, maxiter=50):
    """An inner solver written with lax.while_loop (Newton steps on F): it cannot be
    reverse-differentiated, so a working jax.grad proves the implicit rule is used."""

    def solver(x0, *theta):
        def cond(c):
            x, i = c
            return (jnp.linalg.norm(F(x, *theta)) > tol) & (i < maxiter)

        def body(c):
            x, i = c
            J = jax.jacfwd(F)(x, *theta)
            return x - jnp.linalg.solve(J, F(x, *theta)), i + 1

        return jax.lax.while_loop(cond, body, (x0, 0))[0]

    return solver


@pytest.mark.parametrize("solve", SOLVERS, ids=IDS)
def test_ridge_regression_jacobian_closed_form(solve):
    """w*(lam) = (X^T X + lam I)^{-1} X^T y, so dw*/dlam = -(X^T X + lam I)^{-1} w*."""
    with jax.enable_x64(True):
        X, y = _ridge_problem()  # references below are computed in NumPy

        def F(w, lam):
            return X.T @ (X @ w - y) + lam * w

        H = X.T @ X
        ridge = implicit.custom_root(F, solve=solve)(_newton_while(F))
        w0 = jnp.zeros(4)
        lam = 1.5
        A = H + lam * np.eye(4)
        w_star = np.linalg.solve(A, X.T @ y)
        exact = -np.linalg.solve(A, w_star)

        f = lambda l: ridge(w0, l)

        @jax.jit  # one compilation for the derivatives checked
        def derivatives(l):
            return (f(l), jax.jvp(f, (l,), (jnp.ones_like(l),))[1],
                    jax.grad(lambda l: jnp.sum(f(l) ** 2))(l))

        value, tangent, g = derivatives(jnp.asarray(lam))
        np.testing.assert_allclose(value, w_star, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(tangent, exact, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(g, 2 * w_star @ exact, rtol=1e-7)
        if isinstance(solve, implicit.CG):  # jacfwd, jacrev, and vmap over the implicit rule
            lams = np.array([0.5, 2.0])
            jf, jr = jax.jit(jax.vmap(lambda l: (jax.jacfwd(f)(l), jax.jacrev(f)(l))))(
                jnp.asarray(lams))
            ex = [-np.linalg.solve(H + l * np.eye(4), np.linalg.solve(H + l * np.eye(4), X.T @ y))
                  for l in lams]
            np.testing.assert_allclose(jf, ex, rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(jr, ex, rtol=1e-7, atol=1e-9)


def test_bilevel_quadratic_hypergradient_forward_and_reverse():
    """Inner: x*(t) = argmin_x 1/2 x^T A x - (B t)^T x = A^{-1} B t.
    Outer: L(t) = 1/2 ||x*(t) - c||^2 + rho/2 ||t||^2, so grad L = B^T A^{-1}(x* - c) + rho t."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        M = rng.normal(size=(5, 5))
        A = M @ M.T + 5 * np.eye(5)
        B = rng.normal(size=(5, 3))
        c = rng.normal(size=5)
        rho = 0.1

        def inner_grad(x, t):
            return A @ x - B @ t

        inner = implicit.custom_root(inner_grad, solve=implicit.CG(tol=1e-12))(
            _newton_while(inner_grad))

        def outer(t):
            x = inner(jnp.zeros(5), t)
            return 0.5 * jnp.sum((x - c) ** 2) + 0.5 * rho * jnp.sum(t ** 2)

        t = np.array([0.3, -1.0, 2.0])
        x_star = np.linalg.solve(A, B @ t)
        exact = B.T @ np.linalg.solve(A, x_star - c) + rho * t

        @jax.jit
        def check(t):
            # Forward mode, as ADEV uses it: directional derivatives along each basis vector.
            fwd = jax.vmap(lambda e: jax.jvp(outer, (t,), (e,))[1])(jnp.eye(3))
            # Hypergradient descent from t.
            t_end = jax.lax.fori_loop(0, 300, lambda i, t: t - 2.0 * jax.grad(outer)(t), t)
            return jax.grad(outer)(t), fwd, t_end

        rev, fwd, t_end = check(jnp.asarray(t))
        np.testing.assert_allclose(rev, exact, rtol=1e-8)
        np.testing.assert_allclose(fwd, exact, rtol=1e-8)
        # ... reaches the closed-form outer optimum.
        Ainv_B = np.linalg.solve(A, B)
        t_opt = np.linalg.solve(Ainv_B.T @ Ainv_B + rho * np.eye(3), Ainv_B.T @ c)
        np.testing.assert_allclose(t_end, t_opt, rtol=1e-5, atol=1e-6)


def _contraction():
    W = 0.2 * np.random.default_rng(4).normal(size=(4, 4))

    def T(x, theta):
        return jnp.tanh(W @ x + theta["b"]) * theta["s"]

    theta = {"b": jnp.array([0.1, -0.3, 0.5, 0.2]), "s": jnp.asarray(0.9)}
    return T, theta


def _fp_iterate(T, n):
    def solver(x0, theta):
        return jax.lax.fori_loop(0, n, lambda i, x: T(x, theta), x0)

    return solver


def test_fixed_point_matches_unrolled_and_finite_differences():
    """A contraction x = s * tanh(W x + b) with pytree parameters: implicit == unrolled
    (after many iterations) == central finite differences in float64."""
    with jax.enable_x64(True):
        T, theta = _contraction()
        solver = _fp_iterate(T, 200)
        fp = implicit.custom_fixed_point(T, solve=implicit.GMRES(tol=1e-12))(solver)
        x0 = jnp.zeros(4)

        def loss(sol):
            return lambda th: jnp.sum(jnp.sin(sol(x0, th)))

        g_imp = jax.jit(jax.grad(loss(fp)))(theta)
        g_unr = jax.jit(jax.grad(loss(implicit.unrolled(solver))))(theta)
        for k in theta:
            np.testing.assert_allclose(g_imp[k], g_unr[k], rtol=1e-9, atol=1e-12)

        eps = 1e-6
        direction = {"b": jnp.array([1.0, -2.0, 0.5, 0.3]), "s": jnp.asarray(-0.7)}
        plus = jax.tree_util.tree_map(lambda a, d: a + eps * d, theta, direction)
        minus = jax.tree_util.tree_map(lambda a, d: a - eps * d, theta, direction)
        fp_jit = jax.jit(lambda th: fp(x0, th))
        fd = (fp_jit(plus) - fp_jit(minus)) / (2 * eps)
        _, jvp = jax.jit(lambda th: jax.jvp(fp_jit, (th,), (direction,)))(theta)
        np.testing.assert_allclose(jvp, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("solve", [SOLVERS[1], SOLVERS[3]], ids=[IDS[1], IDS[3]])
def test_other_nonsymmetric_solvers_on_fixed_point(solve):
    """(GMRES, the fixed-point default, is covered above.)"""
    with jax.enable_x64(True):
        T, theta = _contraction()
        fp = implicit.custom_fixed_point(T, solve=solve)(_fp_iterate(T, 200))
        ref = jax.jit(jax.jacfwd(lambda th: _fp_iterate(T, 200)(jnp.zeros(4), th)))(theta)
        got = jax.jit(jax.jacrev(lambda th: fp(jnp.zeros(4), th)))(theta)
        for k in theta:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-8, atol=1e-10)


def test_no_gradient_into_initial_guess():
    F = lambda x, t: x - t
    root = implicit.custom_root(F)(lambda x0, t: t + 0.0 * x0)
    g = jax.grad(lambda x0: root(x0, 2.0))(1.0)
    assert g == 0.0


def test_pytree_solution_and_integer_argument():
    def F(x, t, n):
        return {"a": x["a"] - t * n, "b": x["b"] + 2.0 * t}

    root = implicit.custom_root(F)(lambda x0, t, n: {"a": t * n, "b": -2.0 * t})
    x0 = {"a": 0.0, "b": 0.0}
    out = jax.jit(jax.jacfwd(lambda t: root(x0, t, 3)))(1.0)
    assert out["a"] == pytest.approx(3.0) and out["b"] == pytest.approx(-2.0)


def _ill_conditioned():
    A = jnp.diag(jnp.logspace(0, 4, 8))

    def F(x, t):
        return A @ x - t

    return implicit.custom_root(F, solve=implicit.CG(tol=1e-8, maxiter=2))(
        lambda x0, t: jnp.linalg.solve(A, t))


def test_non_converged_linear_solve_raises_with_residual_and_fix():
    root = _ill_conditioned()
    t = jnp.linspace(1.0, 2.0, 8)
    with pytest.raises(implicit.LinearSolveError, match=r"CG did not converge: residual") as err:
        jax.jvp(lambda t: root(jnp.zeros(8), t), (t,), (jnp.ones(8),))
    msg = str(err.value)
    assert "tol=1e-08" in msg and "maxiter=2" in msg and "raise `maxiter`" in msg and "ridge" in msg


def test_non_converged_under_jit_is_reported():
    root = _ill_conditioned()
    f = jax.jit(jax.grad(lambda t: jnp.sum(root(jnp.zeros(8), t))))
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(f(jnp.ones(8)))


def test_singular_system_error_and_ridge_fix():
    def F(x, t):  # dF/dx = diag(1, 0): singular
        return jnp.array([x[0] - t, 0.0 * x[1]])

    solver = lambda x0, t: jnp.array([t, 0.0])
    root = implicit.custom_root(F, solve=implicit.CG(tol=1e-8))(solver)
    with pytest.raises(implicit.LinearSolveError, match="singular"):
        jax.grad(lambda t: jnp.sum(root(jnp.zeros(2), t)))(1.0)
    fixed = implicit.custom_root(F, solve=implicit.CG(tol=1e-8, ridge=1e-6))(solver)
    g = jax.grad(lambda t: jnp.sum(fixed(jnp.zeros(2), t)))(1.0)
    assert jnp.isfinite(g) and g == pytest.approx(1.0 / (1.0 + 1e-6), rel=1e-5)


def test_root_tol_rejects_a_non_root():
    root = implicit.custom_root(lambda x, t: x - t, root_tol=1e-6)(lambda x0, t: t + 1.0)
    with pytest.raises(implicit.RootError, match=r"not a root.*root_tol"):
        root(0.0, 1.0)


def test_linear_solvers_directly_and_config_errors():
    with jax.enable_x64(True):
        M = np.random.default_rng(5).normal(size=(6, 6))
        A = M @ M.T + 6 * np.eye(6)
        b = np.arange(6.0)
        exact = np.linalg.solve(A, b)
        fns = (implicit.cg, implicit.normal_cg, implicit.gmres, implicit.bicgstab)
        results = jax.jit(lambda b: [fn(lambda v: A @ v, b, tol=1e-12, maxiter=300)
                                     for fn in fns])(b)
        for x, info in results:
            implicit.check(info)
            assert bool(info.converged)
            np.testing.assert_allclose(x, exact, rtol=1e-8)
        x, info = jax.jit(lambda b: implicit.cg(lambda v: A @ v, b, tol=1e-12, ridge=2.0,
                                                maxiter=300))(b)
        np.testing.assert_allclose(x, np.linalg.solve(A + 2 * np.eye(6), b), rtol=1e-8)
        _, info = implicit.cg(lambda v: A @ v, b, tol=1e-14, maxiter=1)
        with pytest.raises(implicit.LinearSolveError, match="did not converge"):
            implicit.check(info)
    with pytest.raises(ValueError, match="maxiter must be >= 1"):
        implicit.CG(maxiter=0)
    with pytest.raises(TypeError, match="solver config"):
        implicit.custom_root(lambda x, t: x, solve="cg")
