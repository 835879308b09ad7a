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

from ppl import _compat
from ppl._interp import run
from ppl._interp import stage as _stage
from ppl._site import fmt_address, normalize_address

from ._estimator import DualSite, Estimator, Reparam, ScoreFunction
from .adev import Sampler, adev_jvp, expect_p, flatten

__all__ = ["expectation", "Expectation", "Plan"]


def default_estimator(site: DualSite) -> Estimator:
    return Reparam() if site.dist().has_rsample else ScoreFunction()


class _Selector:
    """Resolves the estimator of each site (see the module docstring for the order)."""

    def __init__(self, mapping, fn, record=None):
        self.mapping = mapping
        self.fn = fn
        self.record = record
        self.used: set = set()

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
        if self.record is not None:
            self.record.append((site, est))
        return est


@dataclasses.dataclass(frozen=True)
class Plan:
    """The estimation plan of an objective: one row per random choice."""

    rows: tuple

    @property
    def unbiased(self) -> bool:
        return all(r["unbiased"] for r in self.rows)

    def __str__(self):
        head = ("address", "distribution", "shape", "estimator", "unbiased")
        lines = [head] + [(r["address"], r["distribution"], str(r["shape"]), r["estimator"],
                           "yes" if r["unbiased"] else "NO (biased)") for r in self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        verdict = "unbiased" if self.unbiased else "BIASED: see the rows marked NO"
        return "\n".join(out + [f"gradient estimate: {verdict}"])

    __repr__ = __str__


class Expectation:
    """An objective program marked for ADEV (see the module docstring)."""

    def __init__(self, fn: Callable, estimators: Any = None):
        self.fn = fn
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
            jaxpr = _compat.ClosedJaxpr(_lift_consts(closed.jaxpr), [])
            fl = flatten(jaxpr, flat)
            outs, touts = adev_jvp(fl, key, flat, flat_t, sel)
            self._check_used(sel, fl)
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
        outs = expect_p.bind(*closed.consts, *flat, jaxpr=_compat.ClosedJaxpr(_lift_consts(closed.jaxpr), []),
                             select=sel)
        return jax.tree_util.tree_unflatten(out_tree, outs)

    # --- the plan ------------------------------------------------------------------------------
    def plan(self, *args) -> Plan:
        """Every random choice with its distribution, estimator and unbiasedness."""
        closed, flat, _ = _stage(self.fn, args)
        record: list = []
        jaxpr = _compat.ClosedJaxpr(_lift_consts(closed.jaxpr), [])
        all_args = list(closed.consts) + list(flat)

        def traced(*a):
            fl = flatten(jaxpr, list(a))
            sel = self._selector(self._mapping, record)
            tangents = [None] * len(a)
            out = adev_jvp(fl, jax.random.key(0), list(a), tangents, sel)
            self._check_used(sel, fl)
            return out

        jax.eval_shape(traced, *all_args)
        rows, seen = [], set()
        for site, est in record:
            key = (site.addr, id(site.site.treedef), type(est).__name__)
            if key in seen:  # an estimator that calls its continuation many times sees sites again
                continue
            seen.add(key)
            d = site.dist()
            rows.append({"address": site.name, "distribution": d.name,
                         "shape": site.site.value_shape, "estimator": est.describe(),
                         "unbiased": bool(est.unbiased)})
        return Plan(tuple(rows))


def _lift_consts(jaxpr):
    """A jaxpr whose constvars become leading invars (so consts get tangents too)."""
    from jax._src.interpreters import partial_eval as pe

    return pe.convert_constvars_jaxpr(jaxpr)


def expectation(fn=None, *, estimators=None):
    """Mark ``fn`` as an objective program; see :class:`Expectation`.

    Usable as ``expectation(fn)``, ``expectation(fn, estimators=...)`` or as a decorator
    ``@expectation`` / ``@expectation(estimators=...)``.
    """
    if fn is None:
        return lambda f: Expectation(f, estimators)
    return Expectation(fn, estimators)


# --- the nested-expectation primitive's rules ------------------------------------------------------

def _expect_abstract(*args, jaxpr, select):
    return [v.aval for v in jaxpr.jaxpr.outvars]


def _expect_impl(*args, jaxpr, select):
    raise RuntimeError("a nested expectation was evaluated outside an objective; call "
                       "expectation(objective).estimate(key, *args) at the top level")


expect_p.def_abstract_eval(_expect_abstract)
expect_p.def_impl(_expect_impl)
_compat.register_lowering(expect_p, lambda ctx, *a, **kw: _expect_impl())
