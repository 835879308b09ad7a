"""BO-REP (ppl.backends.bilevel) on a quadratic bilevel problem with a closed-form hypergradient.

Lower: g(x, y) = 1/2 y^T A y - y^T B x, so y*(x) = A^-1 B x. Upper: f(x, y) = 1/2 ||y - c||^2
+ 1/2 x^T D x, so F(x) = f(x, y*(x)) is quadratic with gradient D x + B^T A^-1 (y*(x) - c) and
minimizer x_opt = H^-1 B^T A^-1 c, H = D + B^T A^-2 B.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppl.backends.bilevel import bo_rep, hypergradient, normalized_momentum
from ppl.transforms import implicit


def quadratic(scale=1.0):
    rng = np.random.default_rng(3)
    n, m = 4, 3
    M = rng.normal(size=(m, m))
    A = jnp.asarray(M @ M.T + m * np.eye(m))
    B = jnp.asarray(rng.normal(size=(m, n)))
    c = jnp.asarray(rng.normal(size=m))
    D = jnp.asarray(np.diag(rng.uniform(0.5, 1.5, n)))

    def g(x, y, key):
        return 0.5 * y @ A @ y - y @ B @ x

    def f(x, y, key):
        return scale * (0.5 * jnp.sum((y - c) ** 2) + 0.5 * x @ D @ x)

    y_star = lambda x: jnp.linalg.solve(A, B @ x)
    exact = lambda x: scale * (D @ x + B.T @ jnp.linalg.solve(A, y_star(x) - c))
    H = D + B.T @ jnp.linalg.solve(A, jnp.linalg.solve(A, B))
    x_opt = jnp.linalg.solve(H, B.T @ jnp.linalg.solve(A, c))
    x0 = jnp.asarray(rng.normal(size=n))
    return dict(f=f, g=g, A=A, c=c, y_star=y_star, exact=exact, x_opt=x_opt, x0=x0, m=m)


def test_implicit_hypergradient_matches_closed_form_and_finite_differences(key):
    with jax.enable_x64(True):
        q = quadratic()
        x = q["x0"]
        h = jax.jit(lambda x_: hypergradient(q["f"], q["g"], x_, q["y_star"](x_), key))(x)
        np.testing.assert_allclose(h, q["exact"](x), rtol=1e-8, atol=1e-10)
        F = lambda x_: q["f"](x_, q["y_star"](x_), key)
        eps = 1e-6
        fd = np.array([(F(x + eps * e) - F(x - eps * e)) / (2 * eps) for e in np.eye(len(x))])
        np.testing.assert_allclose(h, fd, rtol=1e-6, atol=1e-8)


def test_paper_iterate_converges_to_the_exact_hypergradient(key):
    """With x frozen, the z-iterate reaches A^-1 grad_y f and the hypergradient estimate the
    closed form (a wrong sign in either product of the iterate breaks this)."""
    with jax.enable_x64(True):
        q = quadratic()
        A_max = float(jnp.linalg.eigvalsh(q["A"])[-1])
        kernel = bo_rep(q["f"], q["g"], upper_optimizer=optax.set_to_zero(), lower_lr=1 / A_max,
                        refine_steps=500, lower_steps=5, z_lr=1 / A_max)
        state, info = kernel.run(key, q["x0"], jnp.zeros(q["m"]), 400)
        y = q["y_star"](q["x0"])
        np.testing.assert_allclose(state.y, y, rtol=1e-10)
        np.testing.assert_allclose(state.z, jnp.linalg.solve(q["A"], y - q["c"]), rtol=1e-8)
        np.testing.assert_allclose(info.hypergrad_norm[-1], jnp.linalg.norm(q["exact"](q["x0"])),
                                   rtol=1e-8)


@pytest.mark.parametrize("solve", [None, implicit.CG(tol=1e-10, maxiter=50)], ids=["iterate", "implicit"])
def test_bo_rep_reaches_the_bilevel_minimizer(solve, key):
    """Normalized steps of size eta end within a few eta of x_opt; the scale of f does not
    change the path (normalization), which a plain-gradient step would."""
    with jax.enable_x64(True):
        paths = []
        for scale in (1.0, 100.0):
            q = quadratic(scale)
            kw = dict(z_lr=0.1) if solve is None else dict(solve=solve)
            kernel = bo_rep(q["f"], q["g"], upper_lr=0.005, momentum=0.5, lower_lr=0.1, period=4,
                            lower_steps=20, refine_steps=200, **kw)
            state, info = kernel.run(key, q["x0"], jnp.zeros(q["m"]), 1500)
            assert float(jnp.linalg.norm(state.x - q["x_opt"])) < 0.05
            paths.append(np.asarray(state.x))
        # every hypergradient estimate (z-iterate included) is linear in f's scale
        np.testing.assert_allclose(paths[0], paths[1], atol=1e-6)


def test_periodic_updates_and_initialization_refinement(key):
    with jax.enable_x64(True):
        q = quadratic()
        kernel = bo_rep(q["f"], q["g"], upper_lr=0.01, lower_lr=0.05, period=3, lower_steps=2,
                        refine_steps=7, z_lr=0.1)
        state = kernel.init(key, q["x0"], jnp.zeros(q["m"]))
        y = jnp.zeros(q["m"])
        for _ in range(7):  # the deterministic g: refinement is plain GD from y0
            y = y - 0.05 * jax.grad(q["g"], argnums=1)(q["x0"], y, key)
        np.testing.assert_allclose(state.y, y, rtol=1e-12)
        ys, step = [], jax.jit(kernel.step)
        for k in jax.random.split(key, 7):
            state, info = step(k, state)
            ys.append(np.asarray(state.y))
            assert bool(info.lower_updated) == ((len(ys) - 1) % 3 == 0)
        np.testing.assert_array_equal(ys[1], ys[2])
        assert not np.array_equal(ys[2], ys[3])


def test_kernel_composes_with_jit_and_vmap(key):
    q = quadratic()
    kernel = bo_rep(q["f"], q["g"], upper_lr=0.01, lower_lr=0.1, refine_steps=3, z_lr=0.1)
    y0 = jnp.zeros(q["m"])
    np.testing.assert_allclose(jax.jit(kernel.init)(key, q["x0"], y0).y,
                               kernel.init(key, q["x0"], y0).y, rtol=1e-6)
    xs = jnp.stack([q["x0"], -q["x0"]])
    batched = jax.vmap(lambda x: kernel.run(key, x, y0, 4)[0].x)(xs)
    np.testing.assert_allclose(batched[1], kernel.run(key, -q["x0"], y0, 4)[0].x, rtol=1e-5)


def test_normalized_momentum_is_the_papers_update():
    opt = normalized_momentum(0.3, momentum=0.8)
    x = jnp.array([1.0, -2.0])
    s = opt.init(x)
    m = np.zeros(2)
    for g in (np.array([3.0, 4.0]), np.array([-1.0, 2.0])):
        u, s = opt.update(jnp.asarray(g), s, x)
        m = 0.8 * m + 0.2 * g
        np.testing.assert_allclose(u, -0.3 * m / np.linalg.norm(m), rtol=1e-6)


def test_bad_inputs_raise_naming_the_argument(key):
    q = quadratic()
    f, g, x0, y0 = q["f"], q["g"], q["x0"], jnp.zeros(q["m"])
    for kw, word in [(dict(lower_lr=0.0, upper_lr=0.1, z_lr=0.1), "lower_lr"),
                     (dict(lower_lr=float("nan"), upper_lr=0.1, z_lr=0.1), "lower_lr"),
                     (dict(lower_lr=0.1, upper_lr=-1.0, z_lr=0.1), "learning_rate"),
                     (dict(lower_lr=0.1, upper_lr=0.1, z_lr=0.0), "z_lr"),
                     (dict(lower_lr=0.1, upper_lr=0.1), "z_lr"),
                     (dict(lower_lr=0.1, upper_lr=0.1, z_lr=0.1, period=0), "period"),
                     (dict(lower_lr=0.1, upper_lr=0.1, z_lr=0.1, momentum=1.0), "momentum"),
                     (dict(lower_lr=0.1, upper_lr=0.1, upper_optimizer=optax.sgd(0.1), z_lr=0.1),
                      "upper_optimizer"),
                     (dict(lower_lr=0.1, upper_lr=0.1, solve="cg"), "solve")]:
        with pytest.raises((ValueError, TypeError), match=word):
            bo_rep(f, g, **kw)
    kernel = bo_rep(f, g, lower_lr=0.1, upper_lr=0.1, z_lr=0.1)
    with pytest.raises(ValueError, match="x0.*NaN"):
        kernel.init(key, x0.at[1].set(jnp.nan), y0)
    with pytest.raises(ValueError, match="`g\\(x, y, key\\)` must return a float scalar"):
        bo_rep(f, lambda x, y, k: y * x[:3], lower_lr=0.1, upper_lr=0.1, z_lr=0.1).init(key, x0, y0)
    with pytest.raises(TypeError, match="`f\\(x0, y0, key\\)` failed"):
        kernel.init(key, x0, jnp.zeros(5))


def test_hypercleaning_small(key):
    """The hyper-cleaning pipeline at small size (two Gaussian classes, 30% of the training
    labels flipped, minibatches at both levels): BO-REP's weights single out the flipped
    examples and the cleaned classifier beats the one trained on the noisy labels."""
    rng = np.random.default_rng(0)
    n_tr, n_va, d = 120, 40, 5
    mu = rng.normal(size=d)
    labels = rng.integers(0, 2, n_tr + n_va)
    x = jnp.asarray(rng.normal(size=(n_tr + n_va, d)) + np.where(labels[:, None] == 1, mu, -mu) * 0.6)
    flipped = rng.random(n_tr) < 0.3
    y_tr = jnp.asarray(np.where(flipped, 1 - labels[:n_tr], labels[:n_tr]))
    y_va = jnp.asarray(labels[n_tr:])

    def ce(w, x_, y_):
        z = x_ @ w
        return jnp.logaddexp(0.0, z) - y_ * z

    def g(lam, w, k):
        i = jax.random.choice(k, n_tr, (60,), replace=False)
        return jnp.mean(jax.nn.sigmoid(lam[i]) * ce(w, x[i], y_tr[i])) + 0.05 * jnp.sum(w ** 2)

    def f(lam, w, k):
        i = jax.random.choice(k, n_va, (20,), replace=False)
        return jnp.mean(ce(w, x[n_tr:][i], y_va[i]))

    kernel = bo_rep(f, g, upper_lr=0.3, lower_lr=0.5, period=4, lower_steps=5, refine_steps=100,
                    z_lr=0.5)
    state, _ = kernel.run(key, jnp.zeros(n_tr), jnp.zeros(d), 200)
    w = np.asarray(jax.nn.sigmoid(state.x))
    assert w[flipped].mean() < 0.5 * w[~flipped].mean()
    noisy = bo_rep(f, g, upper_optimizer=optax.set_to_zero(), lower_lr=0.5, refine_steps=900,
                   z_lr=0.5).init(key, jnp.zeros(n_tr), jnp.zeros(d)).y
    val = lambda w_: float(jnp.mean(ce(w_, x[n_tr:], y_va)))
    assert val(state.y) < val(noisy)
