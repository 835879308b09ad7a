"""``expectation(objective)``: an objective program becomes an unbiased gradient estimator.

An objective is a program (it may sample, simulate guides, score models, call nested
expectations) returning a scalar (or a pytree of arrays). ``E = expectation(objective)``:

- ``E.estimate(key, *args)``: an unbiased estimate of ``E[objective(*args)]``, and
  ``jax.grad`` of it (with respect to ``args``) is an unbiased estimate of the gradient;
- ``E.value_and_grad(key, *args, argnums=0)``, ``E.grad(...)``: the same, packaged;
- ``E.jvp(key, primals, tangents)``: forward mode;
- ``E(*args)`` inside another objective: a nested expectation;
- ``E.plan(*args)``: every random choice, its distribution, its estimator, and whether the
  resulting estimate is unbiased.

Choosing estimators. For each random choice, the first that applies:

1. the objective's mapping ``estimators={address: Estimator}`` (addresses as tuples or
   strings; a key may also be a prefix of addresses, e.g. ``"guide"``);
2. the objective's callable ``estimators=lambda site: Estimator | None``;
3. the site's own annotation ``sample(addr, d, estimator=...)``;
4. the default: :class:`Reparam` where the distribution has a reparameterized sampler,
   otherwise :class:`ScoreFunction`.

Bad choices (reparameterizing a discrete choice, enumerating an infinite support, ...)
raise :class:`EstimatorError` naming the site when the objective is traced.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ppl import _compat
from ppl._interp import run
from ppl._interp import stage as _stage
from ppl._site import fmt_address, normalize_address

from ._estimator import DualSite, Estimator, EstimatorError, Reparam, ScoreFunction
from ._verdict import Analysis, SiteFacts, VerdictError, analyze
from .adev import Sampler, adev_jvp, bind_expectation, flatten

__all__ = ["expectation", "Expectation", "Plan", "VerdictError"]


def default_estimator(site: DualSite) -> Estimator:
    return Reparam() if site.dist().has_rsample else ScoreFunction()


class _Watch:
    """The chosen estimator, watched: did it hand the continuation a tangent for the value?"""

    def __init__(self, est, facts):
        self.est = est
        self.facts = facts

    def jvp(self, key, site, kont):
        def watched(k, x, dx):
            if dx is not None:
                self.facts.pathwise = True
            return kont(k, x, dx)

        return self.est.jvp(key, site, watched)

    def __getattr__(self, name):
        return getattr(self.est, name)


_DISCRETE_FAMILIES = frozenset({"Bernoulli", "Categorical", "Poisson", "Geometric"})


def _continuous(site: DualSite) -> bool:
    """Whether the site's values form a continuum (a discrete choice moves no jump smoothly)."""
    if not jnp.issubdtype(site.site.dtype, jnp.inexact):
        return False
    d = site.dist()
    if d.family in _DISCRETE_FAMILIES:
        return False
    support = getattr(getattr(d, "base", None), "support", None)
    if getattr(support, "is_discrete", False):
        return False
    try:
        return d.support_values() is None
    except Exception:  # a support that cannot be listed here: assume a continuum (conservative)
        return True


class _Selector:
    """Resolves the estimator of each site (see the module docstring for the order)."""

    def __init__(self, mapping, fn, record=None):
        self.mapping = mapping
        self.fn = fn
        self.record = record
        self.used: set = set()
        self.facts: dict = {}  # address -> SiteFacts: what ADEV saw at each site

    def _from_mapping(self, addr):
        for n in range(len(addr), 0, -1):
            if addr[:n] in self.mapping:
                self.used.add(addr[:n])
                return self.mapping[addr[:n]]
        return None

    def __call__(self, site: DualSite) -> Estimator:
        est = self._from_mapping(site.addr) if self.mapping else None
        if est is None and self.fn is not None:
            est = self.fn(site)
        if est is None:
            est = site.site.estimator
        if est is None:
            est = default_estimator(site)
        if not isinstance(est, Estimator):
            raise TypeError(f"the estimator chosen for site {site.name!r} is {est!r}, not an "
                            "Estimator object from ppl.estimators")
        est.check(site)
        f = self.facts.get(site.addr)
        if f is None:
            f = self.facts[site.addr] = SiteFacts(est.describe(), _continuous(site))
        if self.record is not None:  # the distribution's name now: its parameters are traced values
            self.record.append((site, est, site.dist().name))
        f.params_live = f.params_live or site.has_tangent
        site.facts = f
        return _Watch(est, f)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The estimation plan of an objective: one row per random choice.

    Each row's ``verdict`` is ``"yes"`` (the estimator is unbiased and ADEV saw no
    discontinuity where it matters), ``"NO (biased)"`` (a biased estimator) or
    ``"unverified"`` (``findings`` say where the program may be discontinuous in the site's
    value); ``row["unbiased"]`` is True only for ``"yes"``. ``objective`` holds the marks the
    objective put on itself (``(kind, reason)``: a biased estimator or a surrogate).
    ``row["plate"]`` says what the estimator of a site inside ``ppl.plate`` did with it (per
    element, or the joint rule and why; None outside plates and for pathwise estimators).
    """

    rows: tuple
    objective: tuple = ()
    nested: tuple = ()  # findings at random choices of nested expectations (not rows here)

    @property
    def unbiased(self) -> bool:
        """True only when every row is proven ("yes") and the objective marks nothing."""
        return all(r["verdict"] == "yes" for r in self.rows) and not self.objective and not self.nested

    def __str__(self):
        head = ("address", "distribution", "shape", "estimator", "unbiased")
        lines = [head] + [(r["address"], r["distribution"], str(r["shape"]), r["estimator"], r["verdict"])
                          for r in self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        for r in self.rows:
            out += [f"{r['address']}: unverified: {f}" for f in r["findings"]]
            if r.get("plate"):
                out.append(f"{r['address']}: {r['plate']}")
        out += [f"nested expectation: unverified: {f}" for f in self.nested]
        out += [f"objective: {kind.upper()}: {reason}" for kind, reason in self.objective]
        kinds = {k for k, _ in self.objective}
        if any(r["verdict"].startswith("NO") for r in self.rows) or "biased" in kinds:
            verdict = "BIASED: see the rows marked NO and the objective's marks"
        elif "surrogate" in kinds:
            verdict = "the gradient of a SURROGATE, not of the expected value (see the objective's mark)"
        elif not self.unbiased:
            verdict = ("UNVERIFIED: unbiased only if the program is continuous where the rows above "
                       "say (expectation(..., strict=True) raises here)")
        else:
            verdict = "unbiased"
        return "\n".join(out + [f"gradient estimate: {verdict}"])

    __repr__ = __str__


def _rows(record, analysis: Analysis, facts=None):
    rows, seen = [], set()
    for site, est, dist_name in record:
        key = (site.addr, id(site.site.treedef), type(est).__name__)
        if key in seen:  # an estimator that calls its continuation many times sees sites again
            continue
        seen.add(key)
        findings = tuple(str(f) for f in analysis.findings.get(site.name, ()))
        verdict = "NO (biased)" if not est.unbiased else "unverified" if findings else "yes"
        f = (facts or {}).get(site.addr)
        plate = getattr(f, "plate", None)
        if plate is None and site.site.plates and f is not None and not f.pathwise and not isinstance(est, Reparam):
            plate = (False, f"plate {site.site.plates[-1].name!r}: joint treatment ({est.describe()} "
                            "does not use plates)")
        described = est.describe() + ("" if plate is None else " (per element)" if plate[0] else " (joint)")
        rows.append({"address": site.name, "distribution": dist_name, "shape": site.site.value_shape,
                     "estimator": described, "unbiased": verdict == "yes", "verdict": verdict,
                     "findings": findings if verdict == "unverified" else (),
                     "plate": None if plate is None else plate[1]})
    return tuple(rows)


def _raise_violations(analysis: Analysis):
    for who, fix, addr, f in analysis.violations:
        raise EstimatorError(
            f"{who}: random choice {addr!r} uses {f.estimator}, which holds the value fixed instead of "
            f"reparameterizing it, so {who}'s gradient would be biased there. {fix}")


def _raise_strict(name, analysis: Analysis, record):
    for site, est, _ in record:
        if not est.unbiased:
            raise VerdictError(f"strict mode: {name}: random choice {site.name!r} uses {est.describe()}, a "
                               "biased estimator. Choose an unbiased one, or drop strict=True.")
    for addr, fs in analysis.findings.items():
        raise VerdictError(
            f"strict mode: {name}: {fs[0]}, so the gradient estimate is not proven unbiased. Make the "
            f"program continuous in {addr} there (e.g. jnp.maximum instead of a comparison and a select), "
            f"or estimate {addr} with an estimator that holds its value fixed (ScoreFunction, a Baseline "
            "around it, MVD), or drop strict=True.")
    for kind, reason in analysis.marks:
        raise VerdictError(f"strict mode: {name}: the objective marks itself {kind}: {reason}")


class Expectation:
    """An objective program marked for ADEV (see the module docstring)."""

    def __init__(self, fn: Callable, estimators: Any = None, strict: bool = False):
        self.fn = fn
        self.strict = bool(strict)
        mapping, selfn = {}, None
        if callable(estimators) and not isinstance(estimators, dict):
            selfn = estimators
        elif isinstance(estimators, dict):
            for k, v in estimators.items():
                try:
                    mapping[normalize_address(k)] = v
                except TypeError:
                    raise TypeError(f"estimators: keys are addresses (str or tuple), got {k!r}") from None
                if not isinstance(v, Estimator):
                    raise TypeError(f"estimators[{k!r}] = {v!r} is not an Estimator object from "
                                    "ppl.estimators (estimators are chosen by object, not by name)")
        elif estimators is not None:
            raise TypeError("estimators must be a dict {address: Estimator}, a callable "
                            f"site -> Estimator | None, or None; got {type(estimators).__name__}")
        self._mapping, self._selfn = mapping, selfn
        self.__name__ = getattr(fn, "__name__", "objective")

    def map_estimators(self, fn: Callable) -> "Expectation":
        """The same objective and ``strict`` with each estimator its ``estimators`` argument
        chooses, ``e``, replaced by ``fn(e)`` (estimators given at a site, and defaults, are kept):
        e.g. each :class:`Baseline` given a value computed from this call's data. Cheap: nothing
        is traced until it is used."""
        if self._selfn is not None:
            selfn = self._selfn
            return Expectation(self.fn, lambda site: (lambda e: None if e is None else fn(e))(selfn(site)),
                               strict=self.strict)
        return Expectation(self.fn, {a: fn(e) for a, e in self._mapping.items()}, strict=self.strict)

    # --- selection ------------------------------------------------------------------------
    def _selector(self, mapping, record=None):
        return _Selector(mapping, self._selfn, record)

    def _check_used(self, sel: _Selector, flat):
        unused = [a for a in sel.mapping if a not in sel.used]
        if unused:
            from ppl._interp import site_addresses

            sites = sorted({fmt_address(a) for a in site_addresses(flat)})
            raise KeyError(f"estimators given for addresses no random choice of the objective has: "
                           f"{sorted(fmt_address(a) for a in unused)}; its random choices are {sites}")

    # --- the estimator ----------------------------------------------------------------------
    def _value_fn(self, closed):
        """A custom_jvp function of (key, est_leaves, consts, *args) whose JVP rule is ADEV."""
        est_tree = jax.tree_util.tree_structure(self._mapping)
        n_consts = len(closed.consts)

        @jax.custom_jvp
        def value(key, est_leaves, *flat):
            consts, args = flat[:n_consts], flat[n_consts:]
            return run(_compat.ClosedJaxpr(closed.jaxpr, list(consts)), list(args), Sampler(key))

        def value_jvp(primals, tangents):
            key, est_leaves, *flat = primals
            _, _, *flat_t = tangents
            mapping = jax.tree_util.tree_unflatten(est_tree, est_leaves)
            sel = self._selector(mapping)
            jaxpr = _compat.ClosedJaxpr(_compat.lift_consts(closed.jaxpr), [])
            fl = flatten(jaxpr, flat)
            record = []
            sel.record = record
            outs, touts = adev_jvp(fl, key, flat, flat_t, sel)
            self._check_used(sel, fl)
            self._verdict(fl, [False] * n_consts + [t is not None for t in flat_t[n_consts:]], sel, record)
            return outs, touts

        value.defjvp(value_jvp)
        return value

    def _call(self, key, args):
        closed, flat, out_tree = _stage(self.fn, args)
        value = self._value_fn(closed)
        est_leaves = jax.tree_util.tree_leaves(self._mapping)
        outs = value(key, est_leaves, *closed.consts, *flat)
        return jax.tree_util.tree_unflatten(out_tree, outs)

    def estimate(self, key, *args):
        """An unbiased estimate of the expected value; ``jax.grad`` of it is unbiased too."""
        return self._call(key, args)

    def value_and_grad(self, key, *args, argnums=0):
        """``(value_estimate, gradient_estimate)`` with respect to ``args[argnums]``."""
        return jax.value_and_grad(lambda *a: self._call(key, a), argnums=argnums)(*args)

    def grad(self, key, *args, argnums=0):
        return self.value_and_grad(key, *args, argnums=argnums)[1]

    def jvp(self, key, primals, tangents):
        """Forward mode: ``(value_estimate, directional_derivative_estimate)``."""
        return jax.jvp(lambda *a: self._call(key, a), tuple(primals), tuple(tangents))

    # --- nested use -----------------------------------------------------------------------------
    def __call__(self, *args):
        closed, flat, out_tree = _stage(self.fn, args)
        mapping = self._mapping
        sel = self._selector(mapping)
        outs = bind_expectation(closed, flat, sel)
        return jax.tree_util.tree_unflatten(out_tree, outs)

    def _verdict(self, fl, live, sel, record) -> Analysis:
        """Derive the verdict from the walk ADEV just made; refuse what must be refused."""
        analysis = analyze(fl, live, sel.facts)
        _raise_violations(analysis)
        if self.strict:
            _raise_strict(self.__name__, analysis, record)
        return analysis

    # --- the plan ------------------------------------------------------------------------------
    def plan(self, *args) -> Plan:
        """Every random choice with its distribution, estimator and verdict.

        The verdict is derived from a walk of the objective with every floating-point argument
        differentiated (see ``ppl.transforms._verdict``); it never raises for an unverified
        row, strict mode or not (the gradient does).
        """
        closed, flat, _ = _stage(self.fn, args)
        record: list = []
        jaxpr = _compat.ClosedJaxpr(_compat.lift_consts(closed.jaxpr), [])
        all_args = list(closed.consts) + list(flat)
        n_consts = len(closed.consts)
        live = [False] * n_consts + [jnp.issubdtype(jnp.result_type(a), jnp.inexact) for a in flat]
        seen: list = []

        def traced(*a):
            fl = flatten(jaxpr, list(a))
            sel = self._selector(self._mapping, record)
            tangents = [jnp.zeros_like(x) if lv else None for x, lv in zip(a, live)]
            out = adev_jvp(fl, jax.random.key(0), list(a), tangents, sel)
            self._check_used(sel, fl)
            seen.append((fl, sel))
            return out

        jax.eval_shape(traced, *all_args)
        fl, sel = seen[0]
        analysis = analyze(fl, live, sel.facts)
        _raise_violations(analysis)
        rows = _rows(record, analysis, sel.facts)
        shown = {r["address"] for r in rows}
        nested = tuple(str(f) for a, fs in analysis.findings.items() if a not in shown for f in fs)
        return Plan(rows, tuple(analysis.marks), nested)


def expectation(fn=None, *, estimators=None, strict=False):
    """Mark ``fn`` as an objective program; see :class:`Expectation`.

    Usable as ``expectation(fn)``, ``expectation(fn, estimators=...)`` or as a decorator
    ``@expectation`` / ``@expectation(estimators=...)``. With ``strict=True`` the gradient
    (``jax.grad``, ``value_and_grad``, ``jvp``) raises :class:`VerdictError` at trace time,
    naming the site, the primitive and the source line, wherever the plan would not say
    "yes" (a possible discontinuity, a biased estimator, an objective marked biased or a
    surrogate).
    """
    if fn is None:
        return lambda f: Expectation(f, estimators, strict)
    return Expectation(fn, estimators, strict)

