"""Exact enumeration of a finite support."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from ppl.distributions import MAX_ENUMERATION, EnumerationError
from ppl.transforms import Estimator, EstimatorError
from ppl.transforms._estimator import estimator_dataclass, static
from ppl.transforms._plate_split import per_element, plate_axis

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

    **Along a plate** (the site inside ``ppl.plate``, its elements independent along the
    plate's dimension) and when the rest of the objective is provably ``c + sum_i h_i(x_i)``
    there (``ppl.transforms._plate_split``; an ELBO of per-element densities summed is), the
    elements are enumerated separately: ``E = c + sum_i sum_v p_t(x_i = v) h_i(v)``,
    ``dE = dc + sum_i sum_v [dp_t(x_i = v) h_i(v) + p_t(x_i = v) dh_i(v)]``. The continuation
    is evaluated at the ``K`` values ``x = (v, ..., v)`` only, each evaluation giving every
    ``h_i(v)`` at once: ``K`` calls for ``n`` elements instead of ``K^n`` (other dimensions of
    a plate element are enumerated jointly: ``K^m`` calls for ``m`` of them). Otherwise the
    joint enumeration runs, and the plan says which one did and why. ``plates=False`` always
    enumerates jointly.
    """

    max_size: int = static(default=MAX_ENUMERATION)
    batch_size: int = static(default=2)
    plates: bool = static(default=True)

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
        if size > self.max_size and self._per_plate_size(site) is None:
            raise self._too_large(site, k, n, size)

    def _per_plate_size(self, site):
        """``K^m`` when a per-element enumeration along the site's plate would fit, else None."""
        plate, axis = plate_axis(site.site)
        if plate is None or not self.plates:
            return None
        d = site.dist()
        k, n = d.support_size()
        elem = d.element_shape
        if len(elem) <= axis or elem[axis] != plate.subsample_size:
            return None
        size = k ** (n // elem[axis])
        return size if size <= self.max_size else None

    def _too_large(self, site, k, n, size, why=""):
        d = site.dist()
        return EstimatorError(
                f"Enum at site {site.name!r}: the joint support of {d.name} over its {n} independent "
                f"elements (shape {d.element_shape}: batch dimensions and any reinterpreted by "
                f".to_event) has {k}^{n}{f' = {size}' if size < 10 ** 18 else ''} values, more than max_size={self.max_size}. Raise "
                "Enum(max_size=...), split the site into smaller ones, or use a sampling estimator "
                "(ScoreFunction, LeaveOneOut, MVD, ARM/DisARM for Bernoulli)." + why)

    def describe(self):
        return "Enum" if self.plates else "Enum(plates=False)"

    def jvp(self, key, site, kont):
        if not self.plates and site.site.plates:
            site.note_plate(False, f"plate {site.site.plates[-1].name!r}: joint treatment (Enum(plates=False))")
        if self._per_plate_size(site) is not None:
            vals = _per_element_values(site.dist(), plate_axis(site.site)[1])
            pe = per_element(site, kont, key, vals[0], "Enum", self.plates)
            if pe is not None:
                site.note_plate(True, f"plate {pe.plate.name!r}: per element ({vals.shape[0]} continuation "
                                      f"calls for its {pe.n} elements)")
                return self._per_element(key, site, pe, vals)
            k, n = site.dist().support_size()
            if k ** n > self.max_size:
                raise self._too_large(site, k, n, k ** n, f" Not per element either: {site.plate_note[1]}; "
                                      "a rest of the objective that sums per-element terms is enumerated per "
                                      "element (estimators/README.md, 'Along a plate').")
        vals = site.dist().enumerate(self.max_size)
        p, dp = site.jvp(lambda dd: jnp.exp(jax.vmap(lambda v: jnp.sum(dd.sampling_log_prob(v)))(vals)))
        outs, douts = call_many(kont, key, vals, self.batch_size)
        out, dout = wsum(p, outs), wsum(p, douts)
        if dp is None:
            return out, dout
        return out, [a + b for a, b in zip(dout, wsum(dp, outs))]

    def _per_element(self, key, site, pe, vals):
        lp = lambda dd: jnp.exp(jax.vmap(lambda v: pe.by_element(dd.sampling_log_prob(v)))(vals))  # (V, n)
        p, dp = site.jvp(lp)
        f = lambda k, v, _: (lambda t: (t[0] + t[2], t[1] + t[3]))(pe.terms(v))
        (outs, douts) = call_many(f, key, vals, self.batch_size)
        n_out = len(outs) // 2
        base, pout = outs[:n_out], outs[n_out:]
        dbase, pdout = douts[:n_out], douts[n_out:]
        out = [(b[0] + jnp.tensordot(p, po, axes=2)).astype(b.dtype) for b, po in zip(base, pout)]
        dout = [(db[0] + jnp.tensordot(p, pd, axes=2)).astype(db.dtype) for db, pd in zip(dbase, pdout)]
        if dp is not None:
            dout = [(a + jnp.tensordot(dp, po, axes=2)).astype(a.dtype) for a, po in zip(dout, pout)]
        return out, dout


def _per_element_values(d, axis):
    """The ``K^m`` values ``x = (v, ..., v)``: every element of the plate takes the same value
    ``v`` of one element's support (``m`` non-plate elements per plate element, enumerated
    jointly), shape ``(K^m, *value_shape)``."""
    vals = d.support_values()                       # (K, *element_shape, *element_event)
    k = vals.shape[0]
    elem = tuple(d.element_shape)
    n = elem[axis]
    m = int(np.prod(elem)) // n
    ve = jnp.moveaxis(vals, 1 + axis, 1)            # (K, n, *rest, *event)
    rest = ve.shape[2:2 + len(elem) - 1]
    event = ve.shape[1 + len(elem):]
    ve = ve.reshape((k, n, m) + event)
    idx = np.array(list(itertools.product(range(k), repeat=m)), dtype=np.int32)   # (K^m, m)
    xs = ve[idx[:, None, :], np.arange(n)[None, :, None], np.arange(m)[None, None, :]]
    xs = xs.reshape((idx.shape[0], n) + tuple(rest) + event)
    full = tuple(d.batch_shape) + tuple(d.event_shape)
    return jnp.moveaxis(xs, 1, 1 + axis).reshape((idx.shape[0],) + full)
