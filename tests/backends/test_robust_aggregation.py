"""Winsorized / median-of-three aggregation and m-coherence against their definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppl.backends import optim


def _per_example(rng, b):
    return {"w": rng.normal(size=(b, 3, 2)) * rng.uniform(0.1, 5, size=(b, 1, 1)), "b": rng.standard_cauchy(size=(b, 4))}


@pytest.mark.parametrize("c, b", [(10.0, 10), (25.0, 9), (0.0, 7)])
def test_winsorize_matches_numpy(c, b):
    rng = np.random.default_rng(0)
    g = _per_example(rng, b)
    out, _ = optim.winsorize(c).update(jax.tree_util.tree_map(jnp.asarray, g), optax.EmptyState())
    for k, x in g.items():
        lo, hi = np.percentile(x, [c, 100 - c], axis=0, method="nearest", keepdims=True)
        np.testing.assert_allclose(np.asarray(out[k]), np.clip(x, lo, hi).mean(0), rtol=1e-5, atol=1e-6)
    if c == 0.0:
        np.testing.assert_allclose(np.asarray(out["b"]), g["b"].mean(0), rtol=1e-5, atol=1e-6)


def test_winsorize_caps_an_outlier():
    g = jnp.array([[1.0], [1.1], [0.9], [1.0], [1000.0], [1.05], [0.95], [1.0], [1.0], [1.0]])
    out, _ = optim.winsorize(10.0).update(g, optax.EmptyState())
    assert float(out[0]) < 1.2 < float(jnp.mean(g))


def test_m3_matches_numpy_and_refuses_uneven_batches():
    rng = np.random.default_rng(1)
    g = _per_example(rng, 12)
    out, _ = optim.m3().update(jax.tree_util.tree_map(jnp.asarray, g), optax.EmptyState())
    for k, x in g.items():
        parts = x.reshape((3, 4) + x.shape[1:]).mean(1)
        np.testing.assert_allclose(np.asarray(out[k]), np.median(parts, axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 3"):
        optim.m3().update(jnp.ones((10, 2)), optax.EmptyState())
    with pytest.raises(ValueError, match="leading batch"):
        optim.m3().update({"a": jnp.ones((6, 2)), "b": jnp.ones((3,))}, optax.EmptyState())


def test_rm3_is_the_median_of_the_last_three():
    rng = np.random.default_rng(2)
    gs = rng.normal(size=(7, 5))
    t = optim.rm3()
    s = t.init(jnp.zeros(5))
    update = jax.jit(t.update)
    for i, g in enumerate(gs):
        out, s = update(jnp.asarray(g), s)
        expected = np.zeros(5) if i < 2 else np.median(gs[i - 2:i + 1], axis=0)  # reference: no step until 3
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)


def test_m_coherence_definition():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(6, 10))
    pairs = np.mean([g[i] @ g[j] for i in range(6) for j in range(6)])  # E over independent i, j
    alpha = pairs / np.mean([g[i] @ g[i] for i in range(6)])
    np.testing.assert_allclose(float(optim.m_coherence({"a": jnp.asarray(g[:, :4]), "b": jnp.asarray(g[:, 4:])})),
                               6 * alpha, rtol=1e-5)
    np.testing.assert_allclose(float(optim.m_coherence(jnp.tile(jnp.arange(1.0, 4.0), (5, 1)))), 5.0, rtol=1e-6)
    np.testing.assert_allclose(float(optim.m_coherence(jnp.eye(4))), 1.0, rtol=1e-6)


def test_aggregated_loss_gives_the_aggregate_as_gradient():
    rng = np.random.default_rng(4)
    batch = {"x": jnp.asarray(rng.normal(size=(9, 3))), "y": jnp.asarray(rng.normal(size=9))}
    params = {"w": jnp.asarray(rng.normal(size=3)), "b": jnp.asarray(0.3)}

    def example_loss(params, ex):
        return (jnp.dot(ex["x"], params["w"]) + params["b"] - ex["y"]) ** 2

    for agg in (optim.winsorize(20.0), optim.m3()):
        loss = optim.aggregated_loss(lambda k, p, ex: example_loss(p, ex), agg)
        value, grad = jax.jit(jax.value_and_grad(loss, argnums=1))(jax.random.key(0), params, batch)
        expected, _ = agg.update(optim.per_example_grads(example_loss)(params, batch), optax.EmptyState())
        np.testing.assert_allclose(float(value), float(jnp.mean(jax.vmap(example_loss, (None, 0))(params, batch))),
                                   rtol=1e-6)
        for k in params:
            np.testing.assert_allclose(np.asarray(grad[k]), np.asarray(expected[k]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="keeps state"):
        optim.aggregated_loss(example_loss, optim.rm3())


@pytest.mark.parametrize("b", [1, 2, 5, 8, 33])
def test_sorting_network_sorts(b):
    """winsorize's sorting network against np.sort, with ties, infinities and odd sizes."""
    from ppl.backends._robust import _sort_batch

    rng = np.random.default_rng(b)
    x = rng.integers(-3, 4, size=(b, 7)).astype(np.float32)
    x[0, 0] = np.inf
    x[-1, 1] = -np.inf
    np.testing.assert_array_equal(np.asarray(_sort_batch(jnp.asarray(x))), np.sort(x, axis=0))
