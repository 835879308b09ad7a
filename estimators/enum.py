"""Exact enumeration of a finite support."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl.distributions import MAX_ENUMERATION, EnumerationError
from ppl.transforms import Estimator, EstimatorError
from ppl.transforms._estimator import estimator_dataclass, static

from ._util import call_many, check_batch_size, wsum

__all__ = ["Enum"]


@estimator_dataclass
class Enum(Estimator):
    """Exact enumeration: ``E = sum_v p_t(v) k(v)``, ``dE = sum_v [dp_t(v) k(v) + p_t(v) dk(v)]``.

    ``v`` ranges over the joint support of every element of the site (``K^n`` values for
    ``n`` elements with ``K`` values each; the dimensions of an ``Independent`` / ``.to_event``
    or ``.expand`` wrapper count as elements); the continuation is called once per value, in one
    ``lax.map`` trace, all with the same key (common random numbers downstream; unbiased for any
    key choice). Preconditions: a finite support known at trace time (Bernoulli, Categorical,
    DiscreteUniform / Binomial with Python-number bounds; NumPyro or TFP) of at most
    ``max_size`` joint values; a masked distribution (``.mask(m)`` with ``m`` not ``True``) is
    refused, since its log density drops the masked elements. Variance: this site contributes
    none (zero variance when it is the only random choice); the cost grows as ``K^n``.

    ``batch_size``: how many continuation calls run together (``lax.map``'s ``batch_size``).
    The default 2 vmaps pairs: a Bernoulli site's two calls become one vmapped call, much
    faster than one at a time when the continuation is many small operations (AIR's presence
    sites), while a large continuation costs about K evaluations either way on the CPU;
    vmapping more than a few calls of a large continuation costs more than K evaluations there
    (measured in BENCHMARKS.md, ADEV overhead, Enumeration); ``batch_size=1`` runs the calls one after another in a loop
    (least memory), ``batch_size >= K^n`` vmaps all of them. The same option exists on MVD,
    LeaveOneOut, ARM and DisARM.
    """

    max_size: int = static(default=MAX_ENUMERATION)
    batch_size: int = static(default=2)

    def check(self, site):
        check_batch_size(self, site)
        d = site.dist()
        try:
            vals = d.support_values()
        except EnumerationError as e:
            raise EstimatorError(f"Enum at site {site.name!r}: {e}.") from None
        if vals is None:
            raise EstimatorError(
                f"Enum at site {site.name!r}: {d.name} has an infinite or continuous support, which "
                "cannot be enumerated. Use ScoreFunction() with a Baseline, LeaveOneOut(), or MVD() "
                "(Poisson, Geometric, Exponential, Normal) instead.")
        k, n = d.support_size()
        size = k ** n
        if size > self.max_size:
            raise EstimatorError(
                f"Enum at site {site.name!r}: the joint support of {d.name} over its {n} independent "
                f"elements (shape {d.element_shape}: batch dimensions and any reinterpreted by "
                f".to_event) has {k}^{n} = {size} values, more than max_size={self.max_size}. Raise "
                "Enum(max_size=...), split the site into smaller ones, or use a sampling estimator "
                "(ScoreFunction, LeaveOneOut, MVD, ARM/DisARM for Bernoulli).")

    def jvp(self, key, site, kont):
        vals = site.dist().enumerate(self.max_size)
        p, dp = site.jvp(lambda dd: jnp.exp(jax.vmap(lambda v: jnp.sum(dd.sampling_log_prob(v)))(vals)))
        outs, douts = call_many(kont, key, vals, self.batch_size)
        out, dout = wsum(p, outs), wsum(p, douts)
        if dp is None:
            return out, dout
        return out, [a + b for a, b in zip(dout, wsum(dp, outs))]
