"""Statistical checks for estimators, with tolerances from the estimates' own variance.

Unbiasedness: ``N`` independent estimates (split fixed keys), then for every component
``|mean - exact| <= Z * stderr + ATOL * (1 + |exact|)``. ``Z`` is set by a Bonferroni bound so
that the whole suite fails spuriously with probability below ``P_SUITE``, counting at most
``N_CHECKS`` component checks (the suite makes a few hundred). ``ATOL`` covers float32
rounding only (it matters for the zero-variance estimators: Enum, MVD on separable problems).
A power guard requires ``stderr <= max_se`` so that a useless high-variance estimator cannot
pass; negative controls must fail the same check.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

P_SUITE = 1e-6
N_CHECKS = 1000
Z = float(-ndtri(P_SUITE / (2 * N_CHECKS)))  # about 6.15
ATOL = 2e-5


def power_limit(exact, frac=0.06):
    """The power guard's stated maximum stderr: ``frac`` of the largest exact component, plus ``frac``."""
    return frac * (1.0 + float(np.max(np.abs(np.asarray(exact)))))


def mean_se(samples):
    s = np.asarray(samples, np.float64)
    return s.mean(0), s.std(0, ddof=1) / np.sqrt(s.shape[0])


def within(samples, exact):
    """Per component: does the sample mean agree with ``exact`` at level Z?"""
    mean, se = mean_se(samples)
    exact = np.asarray(exact, np.float64)
    return np.abs(mean - exact) <= Z * se + ATOL * (1 + np.abs(exact))


def assert_unbiased(samples, exact, max_se, what=""):
    mean, se = mean_se(samples)
    assert np.all(se <= max_se), (
        f"{what}: power guard: stderr {se} exceeds the stated maximum {max_se}: too much variance "
        "for this check to mean anything")
    ok = within(samples, exact)
    assert np.all(ok), f"{what}: mean {mean} +- {se} differs from exact {np.asarray(exact)} by more than {Z:.2f} stderr"


def assert_biased(samples, exact, what=""):
    """A negative control: the same check must reject these estimates."""
    mean, se = mean_se(samples)
    assert not np.all(within(samples, exact)), (
        f"{what}: negative control passed the unbiasedness check (mean {mean} +- {se}, exact {np.asarray(exact)}): "
        "the check has no power here")


def estimates(fn, n, seed=0):
    """``jit(vmap(fn))`` over ``n`` split keys: ``fn(key) -> pytree``."""
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.jit(jax.vmap(fn))(keys)


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
