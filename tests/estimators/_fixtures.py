"""Estimator test fixtures: exact expectations by enumeration, hand-built dual sites and
continuations (no interpreter involved). The statistics live in ``tests/_stats.py``."""
import jax
import jax.numpy as jnp
import numpy as np


def enum_mean(probs, f):
    """``E[f(x)]`` for independent elements with per-element probabilities ``probs`` (n, K)."""
    n, k = probs.shape
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(k)] * n, indexing="ij"), -1).reshape(-1, n)
    w = jnp.prod(probs[jnp.arange(n), grid], axis=-1)
    return jnp.sum(w * jax.vmap(f)(grid))


def dual_site(make, theta, v, addr=("x",)):
    """A :class:`DualSite` built by hand: the distribution ``make(theta)`` with the parameter
    tangents of the direction ``v`` in ``theta``-space (no interpreter involved)."""
    from ppl._site import Site
    from ppl.distributions import as_dist
    from ppl.transforms import DualSite

    with jax.ensure_compile_time_eval():
        d = make(theta)
    leaves, treedef = jax.tree_util.tree_flatten(d)
    # integer leaves (Binomial's total_count) stay concrete, as ppl.sample's literals do
    leaves = [np.asarray(x) if jnp.issubdtype(jnp.result_type(x), jnp.integer) else jnp.asarray(x) for x in leaves]
    _, tans = jax.jvp(lambda t: [jnp.asarray(x) for x in jax.tree_util.tree_leaves(make(t))], (theta,), (v,))
    out = jax.eval_shape(lambda: as_dist(d).sample(jax.random.key(0)))
    site = Site(addr=addr, treedef=treedef, leaves=tuple(leaves), shape=tuple(out.shape), dtype=np.dtype(out.dtype))
    return DualSite(site, tans)


def hand_kont(f, noise=0.1):
    """A hand-written continuation ``k(x) = f(x) + noise * N(0, 1)`` with its tangent."""
    def kont(key, x, dx):
        eps = noise * jax.random.normal(key)
        if dx is None or not jnp.issubdtype(x.dtype, jnp.inexact):
            y = f(x)
            return [y + eps], [jnp.zeros_like(y)]
        y, dy = jax.jvp(f, (x,), (dx,))
        return [y + eps], [dy]
    return kont
