"""Convex two-layer ReLU training by ADMM (ppl.backends.convex_relu) against an independent
solver: cvxpy (Clarabel, an interior-point method) on the same sampled convex program."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.backends import convex_relu as cr


def tiny_problem(key):
    rng = np.random.default_rng(0)
    n, d = 20, 3
    X = rng.normal(size=(n, d))
    X[:, -1] = 1.0                                   # bias column
    y = np.sin(2 * X[:, 0]) + 0.3 * X[:, 1]
    return X, y, np.asarray(cr.sample_gates(key, X, 8)), 0.1


def cvxpy_optimum(X, y, gates, beta):
    cp = pytest.importorskip("cvxpy")
    G = gates.astype(float)
    P, d = G.shape[0], X.shape[1]
    U, V = cp.Variable((P, d)), cp.Variable((P, d))
    pred = sum(cp.multiply(G[i], X @ (U[i] - V[i])) for i in range(P))
    cons = [cp.multiply(2 * G[i] - 1, X @ W[i]) >= 0 for i in range(P) for W in (U, V)]
    obj = 0.5 * cp.sum_squares(pred - y) + beta * sum(cp.norm(U[i]) + cp.norm(V[i]) for i in range(P))
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver=cp.CLARABEL)
    assert prob.status == cp.OPTIMAL
    return prob.value


def test_sample_gates_distinct_patterns(key):
    X, _, gates, _ = tiny_problem(key)
    assert gates.dtype == bool and gates.shape[1] == 20 and 1 <= gates.shape[0] <= 8
    assert len({g.tobytes() for g in gates}) == gates.shape[0]
    h = np.asarray(jax.random.normal(key, (3, 8), jnp.float32))  # the patterns come from X h >= 0
    assert all(any((g == (X @ h[:, j] >= 0)).all() for j in range(8)) for g in gates)


def test_admm_reaches_the_cvxpy_optimum_and_the_network_loss_equals_it(key):
    """Tolerance: 1e-7 relative on the objective; interior-point solutions are accurate to
    about 1e-8, ADMM here converges linearly to machine precision (float64)."""
    with jax.enable_x64(True):
        X, y, gates, beta = tiny_problem(key)
        ref = cvxpy_optimum(X, y, gates, beta)
        res = cr.admm(X, y, gates, beta=beta, rho=0.1, num_iters=1500)
        obj = float(res.objective[-1])
        assert abs(obj - ref) <= 1e-7 * abs(ref), (obj, ref)
        assert float(res.violation[-1]) < 1e-10
        assert float(res.residual[-1]) < 1e-10
        np.testing.assert_allclose(obj, cr.convex_objective(X, y, gates, res.v, beta), rtol=1e-12)
        W, alpha = cr.recover_network(res.v)
        assert W.shape == (3, 2 * gates.shape[0]) and alpha.shape == (2 * gates.shape[0],)
        np.testing.assert_allclose(cr.network_loss(W, alpha, X, y, beta), obj, rtol=1e-12)
        # ReLU outputs of the recovered neurons follow their sampled patterns
        np.testing.assert_allclose(cr.predict(W, alpha, X),
                                   jnp.sum(gates.T * (X @ (res.v[0] - res.v[1]).T), 1), atol=1e-10)


def test_admm_objective_is_not_below_the_optimum_and_converges_from_above(key):
    """A negative control on the comparison: few iterations are measurably off the optimum."""
    with jax.enable_x64(True):
        X, y, gates, beta = tiny_problem(key)
        res = cr.admm(X, y, gates, beta=beta, rho=10.0, num_iters=50)
        assert float(res.objective[-1]) > cvxpy_optimum(X, y, gates, beta) * (1 + 1e-4)


def test_admm_runs_under_jit(key):
    X, y, gates, beta = tiny_problem(key)
    f = lambda X_, y_: cr.admm(X_, y_, gates, beta=beta, rho=1.0, num_iters=20).objective[-1]
    np.testing.assert_allclose(jax.jit(f)(X, y), f(X, y), rtol=1e-5)


def test_bad_inputs_raise(key):
    X, y, gates, beta = tiny_problem(key)
    for kw, word in [(dict(beta=0.0), "beta"), (dict(beta=float("nan")), "beta"),
                     (dict(beta=1.0, rho=-1.0), "rho"), (dict(beta=1.0, gamma=0.0), "gamma"),
                     (dict(beta=1.0, num_iters=0), "num_iters")]:
        with pytest.raises(ValueError, match=word):
            cr.admm(X, y, gates, **kw)
    with pytest.raises(ValueError, match="`y` must have shape"):
        cr.admm(X, y[:-1], gates, beta=1.0)
    with pytest.raises(ValueError, match="`X` contains NaN"):
        cr.admm(np.where(X > 1, np.nan, X), y, gates, beta=1.0)
    with pytest.raises(ValueError, match="`y` contains NaN"):
        cr.admm(X, y * np.nan, gates, beta=1.0)
    with pytest.raises(ValueError, match="`gates` must be a boolean"):
        cr.admm(X, y, gates.astype(float), beta=1.0)
    with pytest.raises(ValueError, match="`X` must be a float matrix"):
        cr.sample_gates(key, X[:, 0], 4)
    with pytest.raises(ValueError, match="num_samples"):
        cr.sample_gates(key, X, 0)
    with pytest.raises(ValueError, match="shape \\(2, P, d\\)"):
        cr.recover_network(np.ones((3, 2)))
