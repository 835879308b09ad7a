"""ppl.backends.hard_constraints: the per-expert Levenberg-Marquardt layer (float64 throughout).

Its gradient against central finite differences and against differentiating an unrolled
Gauss-Newton solve; exactness on a linear PDE whose solution the basis can represent; vmapped
experts against a loop; clear errors for bad input.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.backends import hard_constraints as hc


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _basis(theta, x):
    # four basis functions of x, nonlinear in theta = (a, b)
    a, b = theta
    return jnp.stack([jnp.ones_like(x), jnp.sin(a * x), jnp.cos(b * x + 0.2), jnp.tanh(a * x * x - b)], -1)


def _residual(w, data):
    phi, target = data
    u = phi @ w
    return u + 0.2 * u ** 3 - target   # nonlinear in w, nonzero at the optimum (12 points, 4 weights)


def _problem():
    x = jnp.linspace(-1.0, 1.0, 12)
    target = jnp.sin(2.0 * x) + 0.2 * x
    x_eval = jnp.linspace(-0.9, 0.8, 7)
    return x, target, x_eval


def _loss_with(solve_w):
    x, target, x_eval = _problem()

    def loss(theta):
        w = solve_w(_basis(theta, x), target)
        return jnp.sum(jnp.cos(_basis(theta, x_eval) @ w))
    return loss


def _unrolled_gauss_newton(phi, target, steps=60):
    def step(w, _):
        r, jac = _residual(w, (phi, target)), jax.jacfwd(_residual)(w, (phi, target))
        return w - jnp.linalg.lstsq(jac, r)[0], None
    return jax.lax.scan(step, jnp.zeros(4), None, length=steps)[0]


def test_gradient_matches_finite_differences_and_unrolled_solve():
    layer = hc.HardConstraint(_residual, num_basis=4, rtol=1e-10, atol=1e-10, max_steps=200)
    theta = jnp.array([1.3, 1.9])
    loss = jax.jit(_loss_with(lambda phi, t: layer.solve_one((phi, t)).weights))
    g = jax.jit(jax.grad(loss))(theta)
    eps = 1e-3   # central differences: O(eps^2) truncation; smaller eps meets the solver tolerance
    fd = jnp.array([(loss(theta + eps * e) - loss(theta - eps * e)) / (2 * eps) for e in jnp.eye(2)])
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)
    g_unrolled = jax.grad(_loss_with(_unrolled_gauss_newton))(theta)
    np.testing.assert_allclose(g, g_unrolled, rtol=1e-8, atol=1e-10)
    # the value agrees too, and the gradient is not trivially small
    np.testing.assert_allclose(loss(theta), _loss_with(_unrolled_gauss_newton)(theta), rtol=1e-10)
    assert jnp.linalg.norm(g) > 1e-2
    # negative control: the implicit gradient with only the Gauss-Newton part of the Hessian
    # (dropping sum_i r_i d2 r_i, nonzero here) must fail the same comparison
    g_gn = jax.grad(_loss_with(lambda phi, t: _gauss_newton_implicit(layer, phi, t)))(theta)
    assert not np.allclose(g_gn, fd, rtol=1e-5, atol=1e-7)


def _gauss_newton_implicit(layer, phi, target):
    @jax.custom_vjp
    def solve(phi):
        return jax.lax.stop_gradient(layer.solve_one((phi, target)).weights)

    def fwd(phi):
        w = solve(phi)
        return w, (w, phi)

    def bwd(res, g):
        w, phi = res
        jac = jax.jacfwd(_residual)(w, (phi, target))
        v = jnp.linalg.solve(jac.T @ jac, g)
        return (-jax.vjp(lambda p: _residual(w, (p, target)), phi)[1](jac @ v)[0],)
    solve.defvjp(fwd, bwd)
    return solve(phi)


def test_gradient_through_vmapped_experts():
    layer = hc.HardConstraint(_residual, num_basis=4, rtol=1e-10, atol=1e-10, max_steps=200)
    x, target, _ = _problem()
    shifts = jnp.array([0.0, 0.3, -0.2])

    def loss(theta, solver):
        phis = jax.vmap(lambda s: _basis(theta, x + s))(shifts)
        return jnp.sum(jnp.sin(solver(phis, jnp.broadcast_to(target, (3, 12)))))

    vm = lambda p, t: layer.solve((p, t)).weights
    loop = lambda p, t: jnp.stack([layer.solve_one((p[k], t[k])).weights for k in range(3)])
    theta = jnp.array([1.1, 2.3])
    both = jax.jit(lambda th: [jax.value_and_grad(loss)(th, s) for s in (vm, loop)])
    (v1, g1), (v2, g2) = both(theta)
    np.testing.assert_allclose(v1, v2, rtol=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-9)


def test_vmapped_experts_equal_a_loop():
    layer = hc.HardConstraint(_residual, num_basis=4, rtol=1e-10, atol=1e-10)
    keys = jax.random.split(jax.random.key(3), 2)
    phi = jax.random.normal(keys[0], (5, 12, 4)) * 0.5
    target = jax.random.normal(keys[1], (5, 12))
    w0 = jnp.linspace(-0.1, 0.1, 20).reshape(5, 4)
    out = layer.solve((phi, target), w0)
    assert out.weights.shape == (5, 4) and bool(out.converged.all())
    for k in range(5):
        one = layer.solve_one((phi[k], target[k]), w0[k])
        np.testing.assert_allclose(out.weights[k], one.weights, rtol=1e-12, atol=1e-14)
        assert int(out.num_steps[k]) == int(one.num_steps)


def _heat_basis(pts, nu):
    """Basis values and (d/dt - nu d2/dx2) of them at pts (P, 2); the first three solve the heat
    equation exactly, the last three do not."""
    def phi(p):
        x, t = p
        k = jnp.arange(1.0, 4.0)
        exact = jnp.exp(-nu * k ** 2 * t) * jnp.sin(k * x)
        return jnp.concatenate([exact, jnp.stack([x ** 2, t, x * t])])

    def op(p):
        dt = jax.jacfwd(phi)(p)[:, 1]
        dxx = jax.hessian(phi)(p)[:, 0, 0]
        return dt - nu * dxx
    return jax.vmap(phi)(pts), jax.vmap(op)(pts)


def test_represented_solution_satisfies_the_pde_to_solver_tolerance():
    nu = 0.3
    dom = hc.split_domain([0.0, 0.0], [jnp.pi, 1.0], [1, 4])
    pts = dom.sample(jax.random.key(0), 10)                       # (4, 10, 2)
    _, lphi = jax.jit(jax.vmap(lambda p: _heat_basis(p, nu)))(pts)         # (4, 10, 6)
    x0 = jnp.linspace(0.1, 3.0, 9)
    phi0, _ = jax.jit(_heat_basis, static_argnums=1)(jnp.stack([x0, jnp.zeros_like(x0)], -1), nu)
    u0 = jnp.sin(x0) + 0.5 * jnp.sin(3 * x0)
    # every expert: the PDE at its own points, the (replicated) initial condition
    data = (lphi, jnp.broadcast_to(phi0, (4, 9, 6)), jnp.broadcast_to(u0, (4, 9)))
    layer = hc.HardConstraint(lambda w, d: jnp.concatenate([d[0] @ w, d[1] @ w - d[2]]), 6,
                              rtol=1e-10, atol=1e-10)
    sol = jax.jit(layer.solve)(data)
    assert bool(sol.converged.all())
    pde_residual = jnp.einsum("kpn,kn->kp", lphi, sol.weights)
    assert float(jnp.abs(pde_residual).max()) < 1e-9
    np.testing.assert_allclose(sol.weights, jnp.broadcast_to(jnp.array([1, 0, 0.5, 0, 0, 0.0]), (4, 6)),
                               atol=1e-9)
    # combine: each point takes its own expert's weights
    test = jnp.array([[1.0, 0.1], [2.0, 0.6], [0.5, 0.99]])
    phi_test, _ = jax.jit(_heat_basis, static_argnums=1)(test, nu)
    w = sol.weights.at[2].add(1.0)                                # make experts distinguishable
    got = dom.combine(test, phi_test, w)
    want = jnp.array([phi_test[0] @ w[0], phi_test[1] @ w[2], phi_test[2] @ w[3]])
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_missing_extra_names_it(monkeypatch):
    import importlib.util
    import sys
    monkeypatch.setitem(sys.modules, "optimistix", None)     # as if not installed
    spec = importlib.util.spec_from_file_location("_hc_without_optimistix", hc.__file__)
    with pytest.raises(ImportError, match=r"ppl\[hardconstraints\]"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_bad_inputs_raise_clear_errors():
    res = lambda w, d: d @ w
    for kw, msg in [({"rtol": 0.0}, "rtol"), ({"atol": -1e-6}, "atol"), ({"rtol": float("nan")}, "rtol"),
                    ({"max_steps": 0}, "max_steps"), ({"num_basis": 2.5}, "num_basis")]:
        with pytest.raises(ValueError, match=msg):
            hc.HardConstraint(res, **{"num_basis": 3, **kw})
    layer = hc.HardConstraint(res, 3)
    with pytest.raises(ValueError, match="same leading expert axis"):
        layer.solve((jnp.ones((2, 5, 3)), jnp.ones((3, 5))))
    with pytest.raises(ValueError, match="w0 has shape"):
        layer.solve(jnp.ones((2, 5, 3)), jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="1-D"):
        hc.HardConstraint(lambda w, d: d * w, 3).solve(jnp.ones((2, 5, 3)))
    with pytest.raises(ValueError, match="underdetermined"):
        layer.solve(jnp.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="float64"):
        layer.solve(jnp.ones((2, 5, 3), jnp.float32))
    with pytest.raises(ValueError, match="one entry per coordinate"):
        hc.split_domain([0.0, 0.0], [1.0, 1.0], [4])
    with pytest.raises(ValueError, match="pieces"):
        hc.split_domain([0.0, 0.0], [1.0, 1.0], [1, 0])
    with pytest.raises(ValueError, match="lower < upper"):
        hc.split_domain([0.0, 1.0], [1.0, 1.0], [1, 4])
    dom = hc.split_domain([0.0, 0.0], [1.0, 1.0], [1, 4])
    pts = jnp.array([[0.5, 0.1], [0.5, 0.9]])
    with pytest.raises(ValueError, match="expected \\(4, N\\)"):
        dom.combine(pts, jnp.ones((2, 3)), jnp.ones((2, 3)))      # weights from a 2-expert split
    with pytest.raises(ValueError, match="same split"):
        hc.mixture(jnp.ones((2, 3)), jnp.ones((2, 3)), dom.expert_of(pts))
    with pytest.raises(ValueError, match="coordinates"):
        dom.expert_of(jnp.ones((2, 3)))
