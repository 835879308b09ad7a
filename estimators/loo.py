"""Leave-one-out baseline: n samples at the site, each baselined by the others' mean."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl.transforms import Estimator, EstimatorError
from ppl.transforms._estimator import estimator_dataclass, static

from ._util import call_many, check_batch_size, wsum

__all__ = ["LeaveOneOut"]


@estimator_dataclass
class LeaveOneOut(Estimator):
    """Score function with a leave-one-out baseline (REINFORCE-LOO / "RLOO").

    Draws ``x_1..x_n ~ p_t`` independently, calls the continuation on each (one ``lax.map``
    trace, independent keys) and returns the value ``mean_i k_i`` and the tangent
    ``mean_i [dk_i + (k_i - b_i) dlog p_t(x_i)]`` with ``b_i = mean_{j != i} k_j``
    (equivalently ``k_i - b_i = n/(n-1) (k_i - mean k)``). Unbiased because ``b_i`` is
    independent of ``x_i`` and ``E[dlog p] = 0``.

    Preconditions: ``num_samples >= 2``; any distribution with a density. Variance: below
    ``n`` averaged plain score-function estimates when ``E[k]`` is large compared with its
    spread; costs ``n`` continuation calls. ``batch_size``: continuation calls vmapped together
    (default 2, in pairs; see :class:`Enum`).
    """

    num_samples: int = static(default=4)
    batch_size: int = static(default=2)

    def check(self, site):
        check_batch_size(self, site)
        if self.num_samples < 2:
            raise EstimatorError(f"LeaveOneOut at site {site.name!r}: num_samples={self.num_samples}; "
                                 "a leave-one-out baseline needs num_samples >= 2 (use ScoreFunction() for one sample).")

    def jvp(self, key, site, kont):
        n = self.num_samples
        k1, k2 = jax.random.split(key)
        d = site.dist()
        xs = jax.vmap(d.sample)(jax.random.split(k1, n))
        outs, douts = call_many(kont, jax.random.split(k2, n), xs, self.batch_size)
        w = jnp.full((n,), 1.0 / n)
        out, dout = wsum(w, outs), wsum(w, douts)
        _, dlp = site.jvp(lambda dd: jax.vmap(lambda x: jnp.sum(dd.sampling_log_prob(x)))(xs))
        if dlp is None:
            return out, dout
        resid = [(o - m[None]) * (n / (n - 1)) for o, m in zip(outs, out)]
        return out, [a + b for a, b in zip(dout, wsum(dlp / n, resid))]
