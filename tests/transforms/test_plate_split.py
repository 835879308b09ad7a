"""The per-element decomposition along a plate (transforms/_plate_split.py) on its own: for
functions that are sums of per-element terms it must give ``f(x) = base + sum_i per[i]`` with
``per[i]`` unchanged when any other element moves; for functions that mix elements it must
refuse (the estimators then fall back to the joint treatment)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.transforms._plate_split import NotSeparable, split

N = 5
C = jnp.asarray(np.random.default_rng(0).normal(size=(N, 3)), jnp.float32)
W = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32)
T = jnp.asarray(np.random.default_rng(2).normal(size=(3,)), jnp.float32)

# functions of x, shape (N,), float; each a sum of per-element terms
SEPARABLE = {
    "sum-log": lambda x: jnp.sum(jnp.log1p(x ** 2) * C[:, 0]) + 3.0,
    "index-by-int": lambda x: jnp.sum(T[(x > 0).astype(jnp.int32)]),
    "take-along-axis": lambda x: jnp.sum(jnp.take_along_axis(C, (x > 0).astype(jnp.int32)[:, None], 1)),
    "dot-contracting": lambda x: jnp.dot(C[:, 1], jnp.sin(x)) - jnp.sum(x) / 2,
    "matmul-per-row": lambda x: jnp.sum(jnp.tanh((x[:, None] * C) @ W)),
    "reshape-transpose": lambda x: jnp.sum(jnp.transpose(jnp.broadcast_to(x[:, None], (N, 3)) * C) ** 2),
    "reduce-other-axis": lambda x: jnp.sum(jax.nn.logsumexp(x[:, None] * C, axis=1)),
    "linear-of-sums": lambda x: 2.0 * (jnp.sum(x) - 0.5 * jnp.sum(x ** 3)) / 3.0 + jnp.sum(C),
    "where": lambda x: jnp.sum(jnp.where(x > 0.2, x, -x ** 2)),
    "lax-map-over-values": lambda x: jnp.sum(jax.lax.map(lambda v: jnp.sum(jnp.cos(x * v)), jnp.arange(3.0))),
}
# functions that mix the elements
MIXING = {
    "square-of-sum": lambda x: jnp.sum(x) ** 2,
    "logsumexp-over-plate": lambda x: jax.nn.logsumexp(x),
    "max-over-plate": lambda x: jnp.max(x),
    "roll": lambda x: jnp.sum(x * jnp.roll(x, 1)),
    "shifted-slice": lambda x: jnp.sum(x[1:] * x[:-1]),
    "reverse": lambda x: jnp.sum(x * x[::-1]),
    "cumsum-over-plate": lambda x: jnp.sum(jnp.cumsum(x) ** 2),
    "sort": lambda x: jnp.sum(jnp.sort(x) * C[:, 0]),
    "outer": lambda x: jnp.sum(jnp.outer(x, x)),
    "product-of-sums": lambda x: jnp.sum(x) * jnp.sum(x ** 2),
    "per-element-output": lambda x: x * 2.0,
}


def _kont(f):
    return lambda key, x, dx: ([f(x)], [jnp.zeros((), jnp.float32)])


@pytest.mark.parametrize("name", list(SEPARABLE))
def test_separable_functions_decompose_exactly(name):
    f = SEPARABLE[name]
    r = np.random.default_rng(3)
    x = jnp.asarray(r.normal(size=N), jnp.float32)
    fn, _ = split(_kont(f), jax.random.key(0), x, 0)
    (base, _), (per, _) = jax.jit(fn)(x)
    np.testing.assert_allclose(base + per.sum(0), f(x), rtol=1e-5, atol=1e-5)
    for i in range(N):  # element i's term does not move when every other element does
        x2 = jnp.asarray(r.normal(size=N), jnp.float32).at[i].set(x[i])
        (_, _), (per2, _) = jax.jit(fn)(x2)
        np.testing.assert_allclose(per2[i], per[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(MIXING))
def test_functions_mixing_elements_are_refused(name):
    x = jnp.linspace(-1.0, 1.0, N)
    with pytest.raises(NotSeparable):
        fn, _ = split(_kont(MIXING[name]), jax.random.key(0), x, 0)
