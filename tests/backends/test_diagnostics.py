"""ppl.backends.diagnostics against dense numpy eigendecompositions on small problems.

Power iteration, Hutchinson's trace and SLQ's quadrature are checked in float64 against
``np.linalg.eigh`` of ``jax.hessian``; Monte Carlo checks use the suite's z level (``tests/_stats.py``'s ``Z``)
with the estimator's exact standard error, and a power guard.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppl.backends import diagnostics as D
from ppl.transforms.fit import fit

from .._stats import Z


def _logreg_problem(d_in=5, n=40, classes=3, seed=0):
    """Softmax regression on random data: params a pytree, a non-quadratic loss."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_in))
    y = rng.integers(0, classes, size=n)
    params = {"w": jnp.asarray(rng.normal(size=(d_in, classes)) * 0.5), "b": jnp.asarray(rng.normal(size=classes) * 0.1)}

    def loss(p):
        logits = x @ p["w"] + p["b"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(n), y]) + 0.05 * jnp.sum(p["w"] ** 2)

    return loss, params


def _dense_hessian(f, params):
    x, unravel = jax.flatten_util.ravel_pytree(params)
    return np.asarray(jax.hessian(lambda v: f(unravel(v)))(x))


def test_hvp_equals_dense_hessian_times_vector():
    with jax.enable_x64(True):
        f, p = _logreg_problem()
        H = _dense_hessian(f, p)
        v = jax.tree_util.tree_map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape)), p)
        hv, _ = jax.flatten_util.ravel_pytree(D.hvp(f, p, v))
        np.testing.assert_allclose(hv, H @ np.asarray(jax.flatten_util.ravel_pytree(v)[0]), rtol=1e-10, atol=1e-12)


def test_top_eigenvalue_matches_eigh(key):
    with jax.enable_x64(True):
        f, p = _logreg_problem()
        lam = np.linalg.eigvalsh(_dense_hessian(f, p))
        est = D.hessian_top_eigenvalue(f, p, key=key, num_iters=300)
        assert float(est.value) == pytest.approx(lam[-1], rel=1e-8)
        assert float(est.residual) < 1e-6 * lam[-1]
        vec, _ = jax.flatten_util.ravel_pytree(est.vector)
        assert np.linalg.norm(vec) == pytest.approx(1.0)


def test_top_eigenvalue_is_the_largest_in_magnitude(key):
    """Power iteration returns the eigenvalue of largest magnitude, with its sign."""
    with jax.enable_x64(True):
        A = np.diag([-5.0, 3.0, 1.0, 0.5])
        f = lambda x: 0.5 * x @ A @ x
        est = D.hessian_top_eigenvalue(f, jnp.ones(4), key=key, num_iters=200)
        assert float(est.value) == pytest.approx(-5.0, rel=1e-8)


def test_hutchinson_trace_within_its_standard_error(key):
    with jax.enable_x64(True):
        f, p = _logreg_problem()
        H = _dense_hessian(f, p)
        n = 400
        est = D.hessian_trace(f, p, key=key, num_samples=n)
        # Rademacher: Var(z^T H z) = 2 (||H||_F^2 - sum_i H_ii^2); the exact standard error.
        se = np.sqrt(2 * (np.sum(H ** 2) - np.sum(np.diag(H) ** 2)) / n)
        assert abs(float(est.value) - np.trace(H)) <= Z * se
        assert float(est.stderr) == pytest.approx(se, rel=0.25)  # the reported error is honest
        assert se < 0.05 * np.trace(H)  # power guard: the check can see a 5% error
        # a diagonal Hessian has zero Hutchinson variance: exact
        A = np.diag([2.0, 3.0, 7.0])
        exact = D.hessian_trace(lambda x: 0.5 * x @ A @ x, jnp.ones(3), key=key, num_samples=3)
        assert float(exact.value) == pytest.approx(12.0, rel=1e-12)


def test_hutchinson_negative_control(key):
    """A plausible bug (Gaussian probes scaled by 2) is caught by the same check."""
    with jax.enable_x64(True):
        f, p = _logreg_problem()
        H = _dense_hessian(f, p)
        n = 400
        z = 2 * jax.random.rademacher(key, (n, H.shape[0]), jnp.float64)
        wrong = np.mean(np.einsum("ni,ij,nj->n", z, H, z))
        se = np.sqrt(2 * (np.sum(H ** 2) - np.sum(np.diag(H) ** 2)) / n)
        assert abs(wrong - np.trace(H)) > Z * se


def test_slq_full_lanczos_recovers_every_eigenvalue(key):
    """With k = d Lanczos steps the Ritz values are the Hessian's eigenvalues."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        B = rng.normal(size=(8, 8))
        A = B @ B.T / 8 + np.diag(np.arange(8.0))  # distinct eigenvalues: Krylov sees each once
        f = lambda x: 0.5 * x @ A @ x + 0.1 * jnp.sum(jnp.cos(x))
        p = jnp.asarray(rng.normal(size=8))
        H = _dense_hessian(f, p)
        lam = np.linalg.eigvalsh(H)
        sd = D.hessian_spectrum(f, p, key=key, num_lanczos=H.shape[0], num_probes=2)
        for probe in range(2):
            np.testing.assert_allclose(np.sort(np.asarray(sd.nodes[probe])), lam, rtol=1e-7, atol=1e-9)
            assert float(jnp.sum(sd.weights[probe])) == pytest.approx(1.0, rel=1e-12)
        assert float(sd.lambda_max()) == pytest.approx(lam[-1], rel=1e-8)
        assert float(sd.lambda_min()) == pytest.approx(lam[0], rel=1e-6, abs=1e-9)


def test_slq_moments_are_exact_per_probe_and_unbiased(key):
    """Gauss quadrature: each probe's moment p <= 2k - 1 equals v^T H^p v exactly; averaged over
    probes it estimates tr(H^p) / d within the exact Rademacher standard error."""
    with jax.enable_x64(True):
        f, p = _logreg_problem()
        H = _dense_hessian(f, p)
        d = H.shape[0]
        k, l = 4, 64
        sd = D.hessian_spectrum(f, p, key=key, num_lanczos=k, num_probes=l)
        # the probes hessian_spectrum draws: normalized Rademacher from split keys
        V = np.stack([np.asarray(jax.random.rademacher(kk, (d,), jnp.float64)) / np.sqrt(d)
                      for kk in jax.random.split(key, l)])
        for power in range(0, 2 * k):
            M = np.linalg.matrix_power(H, power)
            per_probe = np.einsum("ni,ij,nj->n", V, M, V)
            got = np.sum(np.asarray(sd.weights) * np.asarray(sd.nodes) ** power, axis=-1)
            np.testing.assert_allclose(got, per_probe, rtol=1e-8, atol=1e-14)
            exact = np.trace(M) / d
            se = np.sqrt(2 * (np.sum(M ** 2) - np.sum(np.diag(M) ** 2)) / l) / d
            assert abs(float(sd.moment(power)) - exact) <= Z * se + 1e-12
        # beyond 2k - 1 the quadrature is no longer exact (the check above would fail)
        M = np.linalg.matrix_power(H, 2 * k + 2)
        got = np.sum(np.asarray(sd.weights) * np.asarray(sd.nodes) ** (2 * k + 2), axis=-1)
        assert np.max(np.abs(got - np.einsum("ni,ij,nj->n", V, M, V))) > 1e-6 * np.max(np.abs(got))
        assert float(sd.trace()) == pytest.approx(d * float(sd.moment(1)))
        grid = np.linspace(float(sd.lambda_min()) - 1, float(sd.lambda_max()) + 1, 2001)
        dens = np.asarray(sd.density(grid, 0.05))
        assert np.sum(dens) * (grid[1] - grid[0]) == pytest.approx(1.0, rel=1e-3)


def test_slq_is_scale_invariant_for_tiny_hessians(key):
    """SLQ of c * f is c times SLQ of f, also in float32 with eigenvalues near 1e-5 (a breakdown
    test relative to 1 instead of to ||H|| once truncated such Hessians after one step)."""
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.normal(size=(60, 60)))
    A = jnp.asarray((Q * np.linspace(0.01, 5.0, 60)) @ Q.T, jnp.float32)
    f = lambda x: 0.5 * x @ A @ x
    x0 = jnp.ones(60, jnp.float32)
    big = D.hessian_spectrum(f, x0, key=key, num_lanczos=12, num_probes=2)
    tiny = D.hessian_spectrum(lambda x: 1e-5 * f(x), x0, key=key, num_lanczos=12, num_probes=2)
    np.testing.assert_allclose(np.asarray(tiny.nodes) * 1e5, np.asarray(big.nodes), rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(tiny.weights), np.asarray(big.weights), rtol=2e-3, atol=1e-5)
    assert float(big.lambda_max()) > 4.5  # 12 steps find the top of [0.01, 5]


def test_linear_stability_on_a_quadratic(key):
    with jax.enable_x64(True):
        A = np.diag([4.0, 1.0, 0.5])
        f = lambda x: 0.5 * x @ A @ x
        r = D.linear_stability(f, jnp.ones(3), 0.4, key=key, num_samples=2)
        assert float(r.gd_ratio) == pytest.approx(0.8)   # 4 * 0.4 / 2
        assert float(r.sgd_ratio) == pytest.approx(1.1)  # 5.5 * 0.4 / 2
        assert bool(r.gd_stable) and not bool(r.sgd_stable)
        with pytest.raises(ValueError, match="learning_rate"):
            D.linear_stability(f, jnp.ones(3), -0.1, key=key)


def test_curvature_monitor_reports_during_fit(key):
    A = jnp.diag(jnp.array([3.0, 1.0]))
    quad = lambda p: 0.5 * p @ A @ p
    lines = []
    mon = D.CurvatureMonitor(quad, learning_rate=0.6, key=key, every=2, num_samples=4, log=lines.append)
    fit(lambda k, p, b: quad(p), optax.sgd(0.6), jnp.ones(2), key=key, num_steps=12, chunk=3, callbacks=[mon])
    assert [r["step"] for r in mon.records] == [6, 12]
    for r in mon.records:
        assert r["lambda_max"] == pytest.approx(3.0, rel=1e-5)
        assert r["trace"] == pytest.approx(4.0, rel=1e-5)
        assert r["gd_ratio"] == pytest.approx(0.9, rel=1e-5) and r["gd_stable"]
        assert not r["sgd_stable"]
    assert len(lines) == 2 and "lambda_max 3" in lines[0] and "SGD UNSTABLE" in lines[0]


def test_bad_arguments_are_refused(key):
    f = lambda x: jnp.sum(x ** 2)
    with pytest.raises(ValueError, match="num_iters"):
        D.hessian_top_eigenvalue(f, jnp.ones(2), key=key, num_iters=0)
    with pytest.raises(ValueError, match="num_samples"):
        D.hessian_trace(f, jnp.ones(2), key=key, num_samples=-1)
    with pytest.raises(ValueError, match="exceeds the number of parameters 2"):
        D.hessian_spectrum(f, jnp.ones(2), key=key, num_lanczos=3)
    with pytest.raises(ValueError, match="floating point"):
        D.hessian_trace(f, jnp.ones(2, jnp.int32), key=key)
    with pytest.raises(ValueError, match="learning_rate"):
        D.CurvatureMonitor(f, learning_rate=float("nan"), key=key)


def _nc1_by_hand(h, y, C):
    N = len(y)
    mu = np.stack([h[y == c].mean(0) for c in range(C)])
    mu_g = mu.mean(0)
    sw = sum(np.outer(h[i] - mu[y[i]], h[i] - mu[y[i]]) for i in range(N)) / N
    sb = sum(np.outer(mu[c] - mu_g, mu[c] - mu_g) for c in range(C)) / C
    return np.trace(sw @ np.linalg.pinv(sb)) / C


def test_nc1_matches_the_definition():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        C, p = 4, 6  # p > C - 1: Sigma_B is singular, the pseudo-inverse matters
        y = np.repeat(np.arange(C), [5, 7, 6, 9])
        h = rng.normal(size=(len(y), p)) + 3 * rng.normal(size=(C, p))[y]
        assert float(D.nc1(h, y, C)) == pytest.approx(_nc1_by_hand(h, y, C), rel=1e-9)
        # collapsing the features toward their class means sends NC1 toward 0
        mu = np.stack([h[y == c].mean(0) for c in range(C)])
        half = mu[y] + 0.5 * (h - mu[y])
        assert float(D.nc1(half, y, C)) == pytest.approx(0.25 * _nc1_by_hand(h, y, C), rel=1e-9)
        assert float(D.nc1(mu[y], y, C)) == pytest.approx(0.0, abs=1e-12)
        assert float(jax.jit(D.nc1, static_argnums=2)(h, y, C)) == pytest.approx(_nc1_by_hand(h, y, C), rel=1e-9)


def test_nc1_refuses_bad_labels():
    h = np.zeros((4, 2))
    with pytest.raises(ValueError, match="every class 0..2"):
        D.nc1(h, np.array([0, 1, 1, 0]), 3)
    with pytest.raises(ValueError, match="integers"):
        D.nc1(h, np.array([0.0, 1, 1, 0]), 2)
    with pytest.raises(ValueError, match=r"\(N, p\)"):
        D.nc1(h, np.array([0, 1, 1]), 2)
