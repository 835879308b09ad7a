"""Measure-valued derivatives (weak derivatives) of one-parameter-at-a-time decompositions."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ppl.transforms import Estimator, EstimatorError
from ppl.transforms._estimator import estimator_dataclass, static
from ppl.transforms._plate_split import per_element

from . import _draws
from ._util import call_many, check_batch_size, wsum

__all__ = ["MVD", "MVD_FAMILIES"]

_SQRT2PI = math.sqrt(2 * math.pi)


def _normal(key, c, x):
    loc, scale = c["loc"], c["scale"]
    k1, k2 = jax.random.split(key)
    r = _draws.rayleigh(k1, x.shape, x.dtype)                      # Weibull(sqrt 2, 2), finite
    eps = (x - loc) / scale                                        # the sample's own noise
    chi3 = jnp.sqrt(eps ** 2 + jnp.sum(jax.random.normal(k2, (2,) + x.shape, x.dtype) ** 2, 0))
    return {"loc": (1 / (scale * _SQRT2PI), loc + scale * r, loc - scale * r),
            "scale": (1 / scale, loc + scale * jnp.sign(eps) * chi3, x)}


def _bernoulli(key, c, x):
    return {"probs": (jnp.ones_like(c["probs"]), jnp.ones_like(x), jnp.zeros_like(x))}


def _categorical(key, c, x):
    p = c["probs"]
    return {"probs": (jnp.ones_like(p), jnp.broadcast_to(jnp.arange(p.shape[-1], dtype=x.dtype), p.shape), None)}


def _poisson(key, c, x):
    return {"rate": (jnp.ones_like(c["rate"]), x + 1, x)}


def _geometric(key, c, x):
    p = c["probs"]  # failures before the first success; jax's geometric counts trials (>= 1)
    return {"probs": (1 / p, x, x + jax.random.geometric(key, p, x.shape).astype(x.dtype))}


def _exponential(key, c, x):
    lam = c["rate"]
    return {"rate": (1 / lam, x, x + jax.random.exponential(key, x.shape, x.dtype) / lam)}


#: family -> rule(key, canonical params, sample) -> {param: (c, x_plus, x_minus or None)}
MVD_FAMILIES = {"Normal": _normal, "Bernoulli": _bernoulli, "Categorical": _categorical,
                "Poisson": _poisson, "Geometric": _geometric, "Exponential": _exponential}


def _canonical(dd, shape):
    """Canonical parameters broadcast to the value shape (plus the category axis)."""
    extra = 1 if dd.family == "Categorical" else 0
    canon = {k: jnp.asarray(v) for k, v in dd.canonical().items()}
    return {k: jnp.broadcast_to(v, shape + v.shape[v.ndim - extra:]) for k, v in canon.items()}


@estimator_dataclass
class MVD(Estimator):
    """Measure-valued derivative (Mohamed et al. 2020, "Monte Carlo Gradient Estimation in
    Machine Learning", section 6; Heidergott & Vazquez-Abad).

    Identity: for each element ``i`` and canonical parameter ``th_i`` the derivative of the
    measure splits as ``d/dth p = c (p+ - p-)`` with probability measures ``p+``, ``p-``, so
    ``d/dth_i E[k] = c_i (E[k(x with x_i ~ p+)] - E[k(x with x_i ~ p-)])``, the other
    elements held at their sample. Forward mode returns
    ``dk(x) + sum_i c_i dth_i (k(x^{+i}) - k(x^{-i}))`` with ``dth`` from
    ``site.jvp(canonical)``. The decompositions (``eps = (x - mu)/sigma``, ``R ~ Rayleigh``):

    ========== ====== ============== ========================= =========================
    family     th     c              p+                         p-
    ========== ====== ============== ========================= =========================
    Normal     loc    1/(s sqrt 2pi) mu + s R                   mu - s R
    Normal     scale  1/s            mu + s sign(eps) chi_3     x (Normal itself)
    Bernoulli  probs  1              delta_1                    delta_0
    Categorical probs_j 1            delta_j                    (none: probs as a measure)
    Poisson    rate   1              x + 1                      x
    Geometric  probs  1/p            x (Geometric itself)       1 + NegBin(2, p) = x + G'
    Exponential rate  1/rate         x (Exponential itself)     Gamma(2, rate) = x + E'/rate
    ========== ====== ============== ========================= =========================

    Common random numbers: ``p+`` and ``p-`` share ``R``; where one part is the distribution
    itself it reuses the site's sample ``x_i`` and the other part is built from it
    (``chi_3 = sqrt(eps^2 + z1^2 + z2^2)`` is a double-sided Maxwell magnitude, ``x + G'`` and
    ``x + E'/rate`` have the right sums). Valid because every term is an expectation over
    ``x_i`` alone, independent of the other elements; each ``+``/``-`` pair also shares the
    continuation's key. Categorical treats ``probs`` as the measure's weights:
    ``sum_j dprobs_j E[k(x_i = j)]``. Bernoulli and Categorical reuse the primal call: since
    the weights sum to zero, only the values other than the sample's are evaluated, with the
    primal call's key, and differenced against it.

    Preconditions: a family above (NumPyro or TFP), scalar events. Cost: ``1 + 2 P n``
    continuation calls (``P`` parameters, ``n`` elements; ``1 + n`` for Bernoulli,
    ``1 + (K - 1) n`` for Categorical), traced once. Variance: low and bounded for bounded
    ``k`` (no score factor), no differentiability of ``k`` needed. ``batch_size``:
    continuation calls vmapped together (default 2, in pairs; see :class:`Enum`).

    **Along a plate** (one scalar element per plate element, inside ``ppl.plate``) and when
    the rest of the objective is provably ``c + sum_i h_i(x_i)`` there
    (``ppl.transforms._plate_split``), element ``i``'s difference only involves ``h_i``, so
    every element is replaced at once: ``sum_i c_i dth_i (h_i(x_i^+) - h_i(x_i^-))`` from one
    evaluation at ``x^+`` and one at ``x^-`` per parameter: ``1 + 2P`` calls in total
    (``1 + (K - 1)`` for Categorical, 2 for Bernoulli) instead of ``1 + 2Pn``. All of them
    share the continuation's key (common random numbers; each term is still an expectation
    over the continuation's randomness, independent of the site). Otherwise the joint rule
    runs; the plan says which one did. ``plates=False`` always uses the joint rule.
    """

    batch_size: int = static(default=2)
    plates: bool = static(default=True)

    def describe(self):
        return "MVD" if self.plates else "MVD(plates=False)"

    def check(self, site):
        check_batch_size(self, site)
        d = site.dist()
        if d.family not in MVD_FAMILIES or d.event_shape != ():
            raise EstimatorError(
                f"MVD at site {site.name!r}: no measure-valued derivative is implemented for "
                f"{d.name}. MVD() supports the families {', '.join(MVD_FAMILIES)} (scalar events). "
                "Use Reparam() or ScoreFunction() (with a Baseline) for this site.")

    def jvp(self, key, site, kont):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        d = site.dist()
        x = d.sample(k1)
        canon, dcanon = site.jvp(lambda dd: _canonical(dd, x.shape))
        if dcanon is None:
            return kont(k2, x, None)
        pe = self._plate(site, kont, k2, x)
        if pe is not None:
            return self._per_element(k3, x, canon, dcanon, d.family, pe)
        if d.family in ("Bernoulli", "Categorical"):
            return self._finite(k2, x, dcanon["probs"], d.family, kont)
        out, dout = kont(k2, x, None)
        n = x.size
        ws, vals, idx, keys = [], [], [], []
        for j, (name, (c, xp, xm)) in enumerate(MVD_FAMILIES[d.family](k3, canon, x).items()):
            elem = jnp.broadcast_to(jnp.arange(n).reshape(x.shape + (1,) * (c.ndim - x.ndim)), c.shape).ravel()
            w = (c * dcanon[name]).ravel()
            kj = jax.random.split(jax.random.fold_in(k4, j), w.shape[0])
            for v, sign in ((xp, 1.0), (xm, -1.0)):
                if v is not None:
                    ws.append(sign * w), vals.append(v.astype(x.dtype).ravel()), idx.append(elem), keys.append(kj)
        w, v, i = jnp.concatenate(ws), jnp.concatenate(vals), jnp.concatenate(idx)
        xs = jnp.broadcast_to(x.ravel(), (i.shape[0], n)).at[jnp.arange(i.shape[0]), i].set(v)
        outs, _ = call_many(kont, jnp.concatenate(keys), xs.reshape((-1,) + x.shape), self.batch_size)
        return out, [a + b for a, b in zip(dout, wsum(w, outs))]

    def _plate(self, site, kont, key, x):
        from ppl.transforms._plate_split import plate_axis

        plate, axis = plate_axis(site.site)
        if plate is None:
            return None
        if self.plates and x.size != plate.subsample_size:
            site.note_plate(False, f"plate {plate.name!r}: joint treatment: MVD goes per element only with "
                                   f"one scalar per plate element; the value has shape {x.shape}")
            return None
        pe = per_element(site, kont, key, x, "MVD", self.plates)
        if pe is not None:
            site.note_plate(True, f"plate {plate.name!r}: per element (every element replaced at once)")
        return pe

    def _per_element(self, key, x, canon, dcanon, family, pe):
        """``dk(x) + sum_i sum_terms w_i (h_i(x^a) - h_i(x^b))`` with every element replaced at once."""
        if family in ("Bernoulli", "Categorical"):
            k = 2 if family == "Bernoulli" else dcanon["probs"].shape[-1]
            flat = x.astype(jnp.int32)
            alts = [((flat + r) % k).astype(x.dtype) for r in range(1, k)]
            if family == "Bernoulli":
                ws = [dcanon["probs"] * (2 * alts[0] - 1)]
            else:
                ws = [jnp.take_along_axis(dcanon["probs"], a.astype(jnp.int32)[..., None], -1)[..., 0]
                      for a in alts]
            pairs = [(w, a, None) for w, a in zip(ws, alts)]   # None: differenced against the sample
        else:
            pairs = [(c * dcanon[name], xp, xm) for name, (c, xp, xm) in MVD_FAMILIES[family](key, canon, x).items()]
        vals = [x]
        for _, xp, xm in pairs:
            vals += [xp.astype(x.dtype)] + ([] if xm is None or xm is x else [xm.astype(x.dtype)])
        f = lambda k, v, _: (lambda t: (t[0] + t[2], t[1] + t[3]))(pe.terms(v))
        outs, douts = call_many(f, key, jnp.stack(vals), self.batch_size)
        n_out = len(outs) // 2
        per = outs[n_out:]                                  # each (calls, n, *leaf)
        out = [(b[0] + jnp.sum(p[0], 0)).astype(b.dtype) for b, p in zip(outs[:n_out], per)]
        dout = [(b[0] + jnp.sum(p[0], 0)).astype(b.dtype) for b, p in zip(douts[:n_out], douts[n_out:])]
        j = 1
        for w, xp, xm in pairs:
            wi = pe.by_element(w)                          # (n,): one scalar per element
            plus = [p[j] for p in per]
            if xm is None or xm is x:
                minus = [p[0] for p in per]
                j += 1
            else:
                minus = [p[j + 1] for p in per]
                j += 2
            dout = [(a + jnp.tensordot(wi, pp - pm, axes=1)).astype(a.dtype) for a, pp, pm in zip(dout, plus, minus)]
        return out, dout

    def _finite(self, key, x, dprobs, family, kont):
        """Bernoulli / Categorical: ``p+``/``p-`` are point masses, and one of them is the sample.

        ``d/dth E[k] = sum_i sum_j dP(x_i = j) k(x with x_i = j)``, and since
        ``sum_j dP(x_i = j) = 0`` this is ``sum_i sum_{j != x_i} dP(x_i = j) (k(x_i = j) - k(x))``:
        the continuation is called at the sample and at the ``n (K - 1)`` other values, all
        with the same key (a Bernoulli element costs one call, not two; the sample's call comes
        first, in the same vmapped group as the next).
        """
        n = x.size
        flat = x.ravel().astype(jnp.int32)
        if family == "Bernoulli":
            alt = (1 - flat)[:, None]                                     # (n, 1): the other value
            w = (dprobs.ravel() * (2 * alt[:, 0] - 1))[:, None]          # dP(x_i = alt)
        else:
            k = dprobs.shape[-1]
            alt = (flat[:, None] + jnp.arange(1, k)[None, :]) % k         # (n, K - 1)
            w = jnp.take_along_axis(dprobs.reshape(n, k), alt, axis=1)
        m = alt.shape[1]
        elem = jnp.repeat(jnp.arange(n), m)
        xs = jnp.broadcast_to(x.ravel(), (n * m, n)).at[jnp.arange(n * m), elem].set(alt.ravel().astype(x.dtype))
        xs = jnp.concatenate([x.ravel()[None], xs])
        outs, douts = call_many(kont, key, xs.reshape((-1,) + x.shape), self.batch_size)
        out, dout = [o[0] for o in outs], [t[0] for t in douts]
        diffs = [o[1:] - b[None] for o, b in zip(outs, out)]
        return out, [a + b for a, b in zip(dout, wsum(w.ravel(), diffs))]
