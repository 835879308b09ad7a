"""ARM and DisARM: antithetic two-evaluation gradients for (vector) Bernoulli sites."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl.transforms import Estimator, EstimatorError
from ppl.transforms._estimator import estimator_dataclass, static

from ._draws import open_uniform
from ._util import call_many, check_batch_size

__all__ = ["ARM", "DisARM"]


def _check_bernoulli(est, site):
    d = site.dist()
    if d.family != "Bernoulli":
        raise EstimatorError(
            f"{type(est).__name__} at site {site.name!r}: it estimates gradients with respect to "
            f"Bernoulli logits, but the site's distribution is {d.name}. Use it on Bernoulli "
            "sites only; for other discrete sites use Enum(), MVD(), LeaveOneOut() or ScoreFunction().")


def _logits(site, shape, dtype):
    """Logits and their tangent as ``log p(1) - log p(0)``: stable for any parameterization."""
    one, zero = jnp.ones(shape, dtype), jnp.zeros(shape, dtype)
    return site.jvp(lambda dd: dd.sampling_log_prob(one) - dd.sampling_log_prob(zero))


def _antithetic(site, kont, key, pair, batch_size):
    """Sample ``u``, build the pair ``(b1, b2)`` and weights ``w`` (per element), call ``kont``."""
    ku, kk = jax.random.split(key)
    shape, dtype = site.site.value_shape, site.site.dtype
    a, da = _logits(site, shape, dtype)
    u = open_uniform(ku, shape, a.dtype)   # symmetric grid: u and 1 - u equidistributed
    b1, b2, w = pair(u, a)
    outs, douts = call_many(kont, kk, jnp.stack([b1, b2]).astype(dtype), batch_size)
    out = [o.mean(0) for o in outs]
    dout = [t.mean(0) for t in douts]
    if da is None:
        return out, dout
    g = jnp.sum(w * da)  # sum_i w_i dlogit_i: linear in the tangent
    return out, [t + (o[0] - o[1]) * g.astype(o.dtype) for t, o in zip(dout, outs)]


@estimator_dataclass
class ARM(Estimator):
    """Augment-REINFORCE-merge (Yin & Zhou 2019) for ``x ~ Bernoulli(sigmoid(a))``, ``x`` a vector.

    Identity: ``d/da_i E[k(x)] = E_u[(k(b1) - k(b2)) (u_i - 1/2)]``, ``u ~ U(0,1)^n``,
    ``b1 = 1[u > sigmoid(-a)]``, ``b2 = 1[u < sigmoid(a)]`` (both Bernoulli(sigmoid(a))).
    Two continuation calls for the whole vector (same key for both); value ``(k(b1)+k(b2))/2``;
    tangent ``mean dk + (k(b1) - k(b2)) sum_i (u_i - 1/2) da_i``. The logits tangent ``da``
    comes from ``log p(1) - log p(0)`` (any parameterization, NumPyro or TFP).
    Preconditions: Bernoulli site. Variance: lower than the score function, higher than
    DisARM (which Rao-Blackwellizes it). ``batch_size``: the default 2 vmaps the two calls,
    1 runs them one after the other (see :class:`Enum`).
    """

    batch_size: int = static(default=2)

    def check(self, site):
        check_batch_size(self, site)
        _check_bernoulli(self, site)

    def jvp(self, key, site, kont):
        def pair(u, a):
            return u > jax.nn.sigmoid(-a), u < jax.nn.sigmoid(a), u - 0.5
        return _antithetic(site, kont, key, pair, self.batch_size)


@estimator_dataclass
class DisARM(Estimator):
    """DisARM (Dong, Mnih & Tucker 2020): ARM integrated over the augmenting noise.

    Identity: with ``b = 1[u < sigmoid(a)]`` and ``b~ = 1[1 - u < sigmoid(a)]`` (antithetic),
    ``d/da_i E[k] = E[ 1/2 (k(b) - k(b~)) (-1)^{b~_i} 1[b_i != b~_i] sigmoid(|a_i|) ]``.
    Two continuation calls for the whole vector; value ``(k(b)+k(b~))/2``.
    Preconditions: Bernoulli site. Variance: never above ARM's; zero weight on elements
    where the pair agrees. ``batch_size``: as for :class:`ARM`.
    """

    batch_size: int = static(default=2)

    def check(self, site):
        check_batch_size(self, site)
        _check_bernoulli(self, site)

    def jvp(self, key, site, kont):
        def pair(u, a):
            b, bt = u < jax.nn.sigmoid(a), 1 - u < jax.nn.sigmoid(a)
            w = jnp.where(b != bt, jnp.where(bt, -1.0, 1.0) * jax.nn.sigmoid(jnp.abs(a)), 0.0)
            return b, bt, 0.5 * w
        return _antithetic(site, kont, key, pair, self.batch_size)
