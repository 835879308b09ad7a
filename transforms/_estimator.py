"""The estimator interface of ADEV, and its two primitive rules.

An estimator decides how the derivative of ``E_{x ~ p_theta}[k(x)]`` is estimated at one
random choice. ADEV calls ``estimator.jvp(key, site, kont)`` where

- ``site`` is a :class:`DualSite`: the distribution's parameters as primal and tangent
  values (``site.dist()``, ``site.jvp(fn)``);
- ``kont(key, x, dx)`` is the rest of the program as a dual-valued function: it returns
  ``(outputs, output_tangents)`` (lists of arrays) for the value ``x`` with tangent ``dx``.

It returns ``(outputs, output_tangents)`` whose expectation (over ``key`` and the randomness
of ``kont``) is ``(E[k], d/dt E[k])`` for an unbiased estimator. It may call ``kont`` zero,
one or many times (for many, map it with ``jax.lax.map``: one trace of the continuation).

Estimators are frozen dataclasses registered as pytrees: array fields (baseline values) are
leaves, so changing them does not recompile.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Estimator", "DualSite", "EstimatorError", "Reparam", "ScoreFunction",
           "tree_axpy", "instantiate"]


class EstimatorError(ValueError):
    """An estimator was chosen for a site it cannot handle."""


def instantiate(primal, tangent):
    """A concrete tangent for ``primal`` (``None`` means a symbolic zero)."""
    if tangent is not None:
        return tangent
    dt = jnp.result_type(primal)
    if jnp.issubdtype(dt, jnp.inexact):
        return jnp.zeros(jnp.shape(primal), dt)
    return np.zeros(jnp.shape(primal), jax.dtypes.float0)


def tree_axpy(a, x, y):
    """``a * x + y`` leaf-wise over lists of arrays (``a`` a scalar or array)."""
    return [a * xi + yi for xi, yi in zip(x, y)]


class DualSite:
    """A random choice with dual (primal, tangent) distribution parameters."""

    def __init__(self, site, tangents, rest_is_random=True):
        self.site = site
        self.tangents = tuple(tangents)
        self.rest_is_random = rest_is_random
        self.facts = None  # the plan's record of this site (set by expectation's selector)
        self.plate_note = None

    def note_plate(self, applies: bool, text: str):
        """Tell the plan whether the estimator used the site's plate (per element) and how."""
        self.plate_note = (applies, text)
        if self.facts is not None:
            self.facts.plate = self.plate_note

    def split_key(self, key):
        """``(key for this site's draws, key for the continuation)``.

        When the rest of the program makes no random choice the continuation ignores its key,
        so no split is needed (one fewer hash per site in the compiled program).
        """
        if self.rest_is_random:
            k1, k2 = jax.random.split(key)
            return k1, k2
        return key, key

    @property
    def addr(self):
        return self.site.addr

    @property
    def name(self):
        return self.site.name

    @property
    def has_tangent(self) -> bool:
        return any(t is not None for t in self.tangents)

    def dist(self):
        """The distribution at the primal parameters."""
        return self.site.dist()

    def jvp(self, fn):
        """``(fn(dist), d fn(dist))`` differentiating through the parameters' tangents.

        ``fn`` maps the distribution adapter to a pytree of arrays. With no tangent on any
        parameter, the tangent is ``None``.
        """
        if not self.has_tangent:
            return fn(self.dist()), None
        leaves = list(self.site.leaves)
        tans = [instantiate(p, t) for p, t in zip(leaves, self.tangents)]
        return jax.jvp(lambda ls: fn(self.site.build(ls)), (leaves,), (tans,))

    def __repr__(self):
        return f"DualSite({self.name!r}, {self.dist().name})"


class Estimator:
    """Base class. Subclasses are frozen dataclasses implementing ``jvp``."""

    #: Whether the estimate's expectation is the exact derivative.
    unbiased = True

    def check(self, site: DualSite) -> None:
        """Raise :class:`EstimatorError` naming ``site`` if this estimator cannot serve it."""

    def jvp(self, key, site: DualSite, kont):
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


def estimator_dataclass(cls):
    """Make ``cls`` a frozen dataclass and a pytree (fields marked static are metadata)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    data, meta = [], []
    for f in dataclasses.fields(cls):
        (meta if f.metadata.get("static") else data).append(f.name)
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)


def static(default=dataclasses.MISSING, **kw):
    return dataclasses.field(default=default, metadata={"static": True}, **kw)


@estimator_dataclass
class Reparam(Estimator):
    """Reparameterization (pathwise) gradient.

    Identity: ``d/dt E_{p_t}[k(x)] = E_eps[ d/dt k(g_t(eps)) ]`` with ``x = g_t(eps)``;
    implicit reparameterization (Gamma, Beta, Dirichlet) differentiates the sampler through
    the CDF, which JAX/NumPyro/TFP do for us. One call of the continuation.

    Preconditions: the distribution has a reparameterized sampler (``has_rsample``) and the
    continuation is differentiable in ``x``. Variance: usually the lowest of the unbiased
    estimators; it scales with the smoothness of ``k``.
    """

    def check(self, site):
        d = site.dist()
        if not d.has_rsample:
            raise EstimatorError(
                f"Reparam at site {site.name!r}: {d.name} has no reparameterized sampler (it is "
                "discrete or not implemented). Use ScoreFunction(), Enum(), an MVD or ARM estimator.")

    def jvp(self, key, site, kont):
        k1, k2 = site.split_key(key)
        x, dx = site.jvp(lambda d: d.rsample(k1))
        return kont(k2, x, dx)


@estimator_dataclass
class ScoreFunction(Estimator):
    """Score-function (REINFORCE / likelihood-ratio) gradient.

    Identity: ``d/dt E_{p_t}[k(x)] = E[ d/dt k(x) + k(x) d/dt log p_t(x) ]`` with ``x``
    held fixed. One call of the continuation; works for any distribution with a density.

    Inside ``ppl.plate``, when the rest of the objective is provably ``c + sum_i h_i(x_i)``
    along the plate (``ppl.transforms._plate_split``: e.g. an ELBO whose per-element log
    densities are summed), each element's score multiplies only its own terms
    (Rao-Blackwellization along the plate, as Pyro's ``TraceGraph_ELBO``):
    ``d k(x) + sum_i (h_i(x_i) + c / n) d log p_t(x_i)``. Unbiased because
    ``E[d log p_t(x_i)] = 0`` and ``x_i`` is independent of ``c`` and of ``h_j``, ``j != i``;
    still one call of the continuation. ``plates=False`` keeps the plain rule; the plan says
    which one ran.

    Variance: grows with ``Var[k]``; subtract a baseline (``ppl.estimators.Baseline``,
    ``EMABaseline``, ``LeaveOneOut``) to reduce it. Along a plate the other elements' terms
    no longer multiply element ``i``'s score; ``c`` (which includes minus a ``Baseline``'s
    value ``b``) is shared evenly, so ``b`` close to ``E[k]`` centres every element's term.
    """

    plates: bool = static(default=True)

    def jvp(self, key, site, kont):
        k1, k2 = site.split_key(key)
        d = site.dist()
        x = d.sample(k1)
        if site.has_tangent:
            from ._plate_split import per_element

            pe = per_element(site, kont, k2, x, "ScoreFunction", self.plates)
            if pe is not None:
                site.note_plate(True, f"plate {pe.plate.name!r}: per element (each element's score "
                                      "times its own terms)")
                base, dout, pout, pdout = pe.terms(x)
                _, dlp = site.jvp(lambda dd: pe.by_element(dd.sampling_log_prob(x)))
                out = [(b + jnp.sum(p, 0)).astype(b.dtype) for b, p in zip(base, pout)]
                # element i's score times h_i + c / n: c (the part not depending on the site,
                # minus a Baseline's value) shared evenly, so a baseline b ~ E[k] centres the terms
                dout = [(db + jnp.sum(pd, 0) + jnp.tensordot(dlp, p + b / pe.n, axes=1)).astype(db.dtype)
                        for db, pd, p, b in zip(dout, pdout, pout, base)]
                return out, dout
        _, dlp = site.jvp(lambda dd: jnp.sum(dd.sampling_log_prob(x)))
        out, dout = kont(k2, x, None)
        if dlp is None:
            return out, dout
        return out, tree_axpy(dlp, out, dout)

    def describe(self):
        return "ScoreFunction" if self.plates else "ScoreFunction(plates=False)"
