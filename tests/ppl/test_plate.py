"""ppl.plate: log densities inside a subsampling plate are scaled by size / subsample_size in
every interpreter (checked against hand computation), nested plates multiply, the scale
survives jit / vmap / scan / ppl.call, and misfit sites or sizes raise PlateError naming the
plate and the site."""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl

N, B = 40, 8
X = jnp.linspace(-1.0, 1.0, B)
Y = 0.7 * X + 0.1


def model(x, y):
    w = ppl.sample("w", nd.Normal(0.3, 1.2))
    with ppl.plate("data", N, subsample_size=B):
        z = ppl.sample("z", nd.Normal(0.0, 0.5).expand((B,)))
        ppl.sample("y", nd.Normal(w * x + z, 0.4), obs=y)
    return w


def by_hand(w, z, x=X, y=Y, scale=N / B):
    return (nd.Normal(0.3, 1.2).log_prob(w)
            + scale * (nd.Normal(0.0, 0.5).log_prob(z).sum() + nd.Normal(w * x + z, 0.4).log_prob(y).sum()))


CH = {"w": 0.25, "z": jnp.linspace(-0.2, 0.3, B)}


def test_assess_scales_sampled_and_observed_sites():
    lp, _ = ppl.assess(model)(CH, X, Y)
    np.testing.assert_allclose(lp, by_hand(CH["w"], CH["z"]), rtol=1e-6)
    lp_jit, _ = jax.jit(ppl.assess(model))(CH, X, Y)
    np.testing.assert_allclose(lp_jit, lp, rtol=1e-6)


def test_simulate_replay_generate_scale_consistently():
    tr = jax.jit(ppl.simulate(model))(jax.random.key(0), X, Y)
    np.testing.assert_allclose(tr.score, by_hand(tr.choices["w"], tr.choices["z"]), rtol=1e-5)
    re = ppl.replay(model, tr)(jax.random.key(1), X, Y)
    np.testing.assert_allclose(re.score, tr.score, rtol=1e-6)
    # generate: the weight holds the constrained and observed sites, scaled
    tr2, lw = ppl.generate(model)(jax.random.key(2), {"z": CH["z"]}, X, Y)
    expect = (N / B) * (nd.Normal(0.0, 0.5).log_prob(CH["z"]).sum()
                        + nd.Normal(tr2.choices["w"] * X + CH["z"], 0.4).log_prob(Y).sum())
    np.testing.assert_allclose(lw, expect, rtol=1e-5)
    np.testing.assert_allclose(tr2.score, by_hand(tr2.choices["w"], CH["z"]), rtol=1e-5)


def test_no_subsample_means_no_scale_and_vmap_gives_the_plate_dim():
    def m(x, y):
        w = ppl.sample("w", nd.Normal(0.3, 1.2))
        with ppl.plate("data", B):
            jax.vmap(lambda xi, yi: ppl.sample("y", nd.Normal(w * xi, 0.4), obs=yi))(x, y)

    lp, _ = ppl.assess(m)({"w": 0.25}, X, Y)
    np.testing.assert_allclose(lp, by_hand(0.25, 0.0 * X, scale=1.0) - nd.Normal(0.0, 0.5).log_prob(0.0 * X).sum(),
                               rtol=1e-5)


def test_nested_plates_multiply_and_dims_follow_numpyro():
    def m():
        with ppl.plate("rows", 10, subsample_size=2):          # dim -1
            with ppl.plate("cols", 9, subsample_size=3):       # dim -2
                ppl.sample("v", nd.Normal(0.0, 1.0).expand((3, 2)))
            ppl.sample("u", nd.Normal(0.0, 1.0).expand((2,)))

    v, u = jnp.ones((3, 2)) * 0.4, jnp.array([0.1, -0.3])
    lp, _ = ppl.assess(m)({"v": v, "u": u})
    expect = 5 * 3 * nd.Normal(0.0, 1.0).log_prob(v).sum() + 5 * nd.Normal(0.0, 1.0).log_prob(u).sum()
    np.testing.assert_allclose(lp, expect, rtol=1e-6)


def test_plate_under_scan_and_call_and_function_form():
    def step(c, y):
        with ppl.plate("data", N, subsample_size=B):
            ppl.sample("y", nd.Normal(c, 1.0).expand((B,)), obs=y)
        return c, None

    def m(ys):
        c = ppl.sample("c", nd.Normal(0.0, 1.0))
        jax.lax.scan(step, c, ys)

    ys = jnp.stack([Y, 2 * Y, -Y])
    lp, _ = ppl.assess(m)({"c": 0.2}, ys)
    np.testing.assert_allclose(lp, nd.Normal(0.0, 1.0).log_prob(0.2) + (N / B) * nd.Normal(0.2, 1.0).log_prob(ys).sum(),
                               rtol=1e-5)

    def lik(w, x, y):
        ppl.sample("y", nd.Normal(w * x, 0.4), obs=y)

    def outer(x, y):
        w = ppl.sample("w", nd.Normal(0.3, 1.2))
        ppl.plate("data", N, subsample_size=B)(ppl.call)("lik", lik, w, x, y)

    lp2, _ = ppl.assess(outer)({"w": 0.25}, X, Y)
    np.testing.assert_allclose(
        lp2, nd.Normal(0.3, 1.2).log_prob(0.25) + (N / B) * nd.Normal(0.25 * X, 0.4).log_prob(Y).sum(), rtol=1e-5)


def test_subsample_size_mismatch_names_plate_and_site():
    def lik(x, y):
        w = ppl.sample("w", nd.Normal(0.3, 1.2))
        with ppl.plate("data", N, subsample_size=B):
            ppl.sample("y", nd.Normal(w * x, 0.4), obs=y)

    with pytest.raises(ppl.PlateError, match=r"'y' inside plate 'data' \(subsample_size=8.*has 5"):
        ppl.assess(lik)({"w": 0.1}, X[:5], Y[:5])
    with pytest.raises(ppl.PlateError, match=r"'w' inside plate 'data'.*no dim -1"):
        def global_inside():
            with ppl.plate("data", N, subsample_size=B):
                ppl.sample("w", nd.Normal(0.0, 1.0))
        ppl.simulate(global_inside)(jax.random.key(0))


@pytest.mark.parametrize("args, match", [
    (("d", 5, 8), "cannot be larger"),
    (("d", 0), "size must be >= 1"),
    (("d", 5.0), "must be a Python int"),
    (("d", 5, None, 1), "dim must be a negative int"),
])
def test_bad_plate_arguments(args, match):
    with pytest.raises(ppl.PlateError, match=match):
        ppl.plate(*args)


def test_traced_size_is_refused():
    with pytest.raises(ppl.PlateError, match="must be a Python int"):
        jax.jit(lambda n: ppl.plate("d", n))(5)


def test_nested_plates_need_distinct_names_and_dims():
    with pytest.raises(ppl.PlateError, match="already open"):
        with ppl.plate("a", 3):
            with ppl.plate("a", 3):
                pass
    with pytest.raises(ppl.PlateError, match="taken by the enclosing plate 'a'"):
        with ppl.plate("a", 3):
            with ppl.plate("b", 3, dim=-1):
                pass
    assert ppl._plate.current_plates() == ()  # left clean after errors


def test_a_jitted_function_traced_inside_a_plate_is_retraced_outside():
    """The open plates are part of jax.jit's cache key: no scale is served from another trace."""
    @jax.jit
    def lik(y):
        return ppl.sample("y", nd.Normal(0.0, 1.0).expand((4,)), obs=y)

    def inside(y):
        with ppl.plate("d", 8, subsample_size=4):
            lik(y)

    def outside(y):
        lik(y)

    y = jnp.linspace(0.1, 0.4, 4)
    plain = nd.Normal(0.0, 1.0).log_prob(y).sum()
    np.testing.assert_allclose(ppl.assess(inside)({}, y)[0], 2 * plain, rtol=1e-6)
    np.testing.assert_allclose(ppl.assess(outside)({}, y)[0], plain, rtol=1e-6)
    np.testing.assert_allclose(ppl.assess(inside)({}, y)[0], 2 * plain, rtol=1e-6)


def test_a_scan_over_data_points_inside_a_plate_is_refused():
    """One element per scan step has no plate dimension: refused, not silently scaled."""
    def m(ys):
        c = ppl.sample("c", nd.Normal(0.0, 1.0))
        with ppl.plate("data", 40, subsample_size=4):
            jax.lax.scan(lambda cc, y: (cc, ppl.sample("y", nd.Normal(cc, 1.0), obs=y)), c, ys)

    with pytest.raises(ppl.PlateError, match=r"'y' inside plate 'data'.*batch shape \(\) has no dim -1"):
        ppl.assess(m)({"c": 0.1}, jnp.ones(4))
