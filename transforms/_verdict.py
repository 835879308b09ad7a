"""The plan's verdict, derived from the program: where a sampled value meets a discontinuity.

An unbiased site estimator is unbiased only if the rest of the program (its continuation) is
regular enough for the estimator's identity: a pathwise (reparameterized) estimator swaps
``d/dt`` and ``E``, which fails when the program jumps in the sampled value
(``E[1(z > 0)]`` has a derivative; ``1(z > 0)`` has none). A score-function, enumeration or
measure-valued estimator holds the sampled value fixed and needs no smoothness in it, but the
program must still be smooth in the *differentiated* values wherever a continuous random value
moves a jump (``E_z[1(z > t)]``).

:func:`analyze` walks the (flattened) objective and gives every variable two facts:

- ``live``: it carries a tangent: it depends on a differentiated input, or on a value that a
  site's estimator handed on with a tangent (a pathwise site), through differentiable
  operations (``stop_gradient``, rounding, comparisons and integer results cut it);
- ``rand``: the continuous random choices (and pathwise sites) its value depends on, through any
  data flow (``stop_gradient`` included, and ``cond``/``select``/``while`` predicates).

A *discontinuity* is an equation with a live floating-point operand that is a comparison, a
rounding (``floor``, ``ceil``, ``round``, ``sign``, ``rem``), an integer or boolean result of a
floating-point value (casts, ``argmax``/``argmin``, ``sort``/``top_k`` indices, ...). Each
continuous random choice in that operand's ``rand`` gets a finding: "the program may be
discontinuous in <address> at <primitive> (<source line>)". Continuous non-smooth operations
(``max``, ``min``, ``abs``, ``clamp``, ``relu``, sorted values, a ``select`` whose predicate does
not move) are no discontinuity; nor is a ``select`` with a constant infinite case (a support check
``where(in_support(x), log_p(x), -inf)``: crossing it makes the expectation infinite), nor
``==``/``!=`` on a value without atoms (it equals a given number with probability 0; values
that went through ``max``/``min``/``clamp``/``select`` may have atoms). A jump is a finding only if it reaches the objective's outputs through data flow, so
an unused comparison is none, and neither is ``where(isfinite(x), f(x), g(x))``'s ``g`` (it
runs only on infinities; NumPyro's ``binary_cross_entropy_with_logits`` compares ``x > 0``
there).

Objectives also state what the analysis cannot see: :func:`mark` tags a value as a biased
gradient estimator or a surrogate; :func:`require_pathwise` names values whose sites must be
reparameterized (a DReG guide). Both are identities on values.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppl import _compat
from ppl._site import det_p, fmt_address, sample_p

from .adev import expect_p

__all__ = ["Finding", "SiteFacts", "Analysis", "analyze", "mark", "require_pathwise",
           "VerdictError", "mark_p", "require_p"]


class VerdictError(ValueError):
    """Raised in strict mode (``expectation(f, strict=True)``) when the verdict is not "yes"."""


# --- objective marks ---------------------------------------------------------------------------

mark_p = _compat.Primitive("ppl_objective_mark")
require_p = _compat.Primitive("ppl_require_pathwise")
require_p.multiple_results = True

for _p in (mark_p,):
    _p.def_impl(lambda x, **kw: x)
    _p.def_abstract_eval(lambda x, **kw: x)
    _compat.register_lowering(_p, _compat.lower_fun(lambda x, **kw: x, multiple_results=False))
    _compat.primitive_jvps[_p] = (lambda p: lambda primals, tangents, **kw: (
        p.bind(primals[0], **kw), _compat.instantiate_zeros(tangents[0])))(_p)
    _compat.primitive_batchers[_p] = (lambda p: lambda args, dims, **kw: (p.bind(args[0], **kw), dims[0]))(_p)

require_p.def_impl(lambda *xs, **kw: list(xs))
require_p.def_abstract_eval(lambda *xs, **kw: list(xs))
_compat.register_lowering(require_p, _compat.lower_fun(lambda *xs, **kw: list(xs), multiple_results=True))
_compat.primitive_jvps[require_p] = lambda primals, tangents, **kw: (
    require_p.bind(*primals, **kw), [_compat.instantiate_zeros(t) for t in tangents])
_compat.primitive_batchers[require_p] = lambda args, dims, **kw: (require_p.bind(*args, **kw), list(dims))


def mark(value, kind: str, reason: str):
    """Tag an objective's value: ``kind`` is ``"biased"`` or ``"surrogate"``; ``reason`` says why.

    The plan of any objective whose output depends on the tagged value reports it, and
    ``Plan.unbiased`` is False. Returns ``value`` (a pytree; every leaf is tagged).
    """
    if kind not in ("biased", "surrogate"):
        raise ValueError(f"mark: kind is 'biased' or 'surrogate', got {kind!r}")
    return jax.tree_util.tree_map(lambda x: mark_p.bind(jnp.asarray(x), kind=kind, reason=str(reason)), value)


def require_pathwise(values, who: str, fix: str):
    """Require every random choice ``values`` (a pytree) depend on to be estimated pathwise.

    ``who`` names the objective, ``fix`` what to use instead; ADEV raises
    :class:`~ppl.transforms.EstimatorError` at trace time naming the first site whose
    estimator holds its value fixed while its parameters are differentiated.
    """
    leaves, tree = jax.tree_util.tree_flatten(values)
    if not leaves:
        return values
    out = require_p.bind(*[jnp.asarray(x) for x in leaves], who=str(who), fix=str(fix))
    return jax.tree_util.tree_unflatten(tree, out)


# --- what the walk saw at each site ------------------------------------------------------------

@dataclasses.dataclass
class SiteFacts:
    """What ADEV saw at one site (over every time it met it)."""

    estimator: str
    continuous: bool          # the distribution is not discrete
    params_live: bool = False  # some parameter had a tangent
    pathwise: bool = False     # the estimator handed the continuation a tangent for the value
    plate: tuple = None        # (per element?, what the estimator did with the site's plate)


@dataclasses.dataclass(frozen=True)
class Finding:
    address: str
    primitive: str
    where: str

    def __str__(self):
        return f"the program may be discontinuous in {self.address} at {self.primitive} ({self.where})"


@dataclasses.dataclass
class Analysis:
    findings: dict          # address (str) -> [Finding], first seen first
    marks: list             # [(kind, reason)]
    violations: list        # [(who, fix, address, SiteFacts)]


# --- the walk ------------------------------------------------------------------------------------

_ROUNDING = frozenset({"floor", "ceil", "round", "sign", "rem", "nextafter", "atan2"})
_SAFE_INT_RESULTS = frozenset({"is_finite"})
_CUT = frozenset({"stop_gradient"})
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "remat2", "checkpoint", "remat"})
_CUSTOM = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})


class _A(NamedTuple):
    """The abstract value of a variable."""

    live: bool = False             # carries a tangent
    rand: frozenset = frozenset()  # continuous random choices (and pathwise sites) it depends on
    src: frozenset = frozenset()   # every random choice it depends on
    disc: frozenset = frozenset()  # discontinuities (address, primitive, where) it passed through
    finite: bool = False           # it is an is_finite test (selects on it skip the non-finite case)
    inf: bool = False              # a constant infinity or NaN (a log density's "impossible")
    atom: bool = False             # may equal a value with positive probability that moves (relu(z) == 0)


_BOT = _A()


def _inexact(aval):
    return jnp.issubdtype(aval.dtype, jnp.inexact)


def _join(a, b):
    return _A(a.live or b.live, a.rand | b.rand, a.src | b.src, a.disc | b.disc, atom=a.atom or b.atom)


def _joinall(vals):
    out = _BOT
    for v in vals:
        out = _join(out, v)
    return out


def _depend(x, on):
    """``x`` also depends on ``on`` (a predicate, an index): its randomness and its jumps."""
    return _A(x.live, x.rand | on.rand, x.src | on.src, x.disc | on.disc, atom=x.atom or on.atom)


class _Walker:
    def __init__(self, facts):
        self.facts = facts
        self.marks: list = []
        self.violations: list = []

    def jaxpr(self, jaxpr, ins):
        env = {}
        for v, x in zip(jaxpr.invars, ins):
            env[v] = x

        def read(v):
            if _compat.is_literal(v):
                return _INF if _nonfinite(v.val) else _BOT
            return env.get(v, _BOT)

        for eqn in jaxpr.eqns:
            outs = self.eqn(eqn, [read(v) for v in eqn.invars])
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def _closed(self, closed, vals):
        return self.jaxpr(_open(closed), vals)

    def eqn(self, eqn, vals):
        prim = eqn.primitive
        name = prim.name
        if prim is sample_p:
            return [self._site(eqn, vals)]
        if prim is det_p:
            return vals
        if prim is mark_p:
            self.marks.append((eqn.params["kind"], eqn.params["reason"]))
            return vals
        if prim is require_p:
            self._require(eqn, vals)
            return vals
        if name in _CALLS:
            return self._closed(_compat.call_jaxpr_of(eqn), vals)
        if name in _CUSTOM:  # the primal function: what the program computes
            return self._closed(_compat.custom_primal_jaxpr(eqn), vals)[:len(eqn.outvars)]
        if name == "scan":
            return self._scan(eqn, vals)
        if name == "while":
            return self._while(eqn, vals)
        if name == "cond":
            return self._cond(eqn, vals)
        if name == "select_n":
            return [self._select(vals)]
        if eqn.primitive is expect_p:
            return self._nested(eqn, vals)
        subs = list(_compat.jaxprs_in_params(eqn.params))
        if subs:  # another higher-order primitive: look inside for marks, then be conservative
            for s in subs:
                self._closed(s, [_joinall(vals)] * len(_open(s).invars))
            return [_joinall(vals)] * len(eqn.outvars)
        return self._first_order(eqn, vals)

    def _first_order(self, eqn, vals):
        name = eqn.primitive.name
        floats = [x for x, v in zip(vals, eqn.invars) if _inexact(v.aval)]
        live = any(x.live for x in floats)
        j = _joinall(vals)
        disc = j.disc
        if live and name not in _SAFE_INT_RESULTS and (
                name in _ROUNDING or any(not _inexact(o.aval) for o in eqn.outvars)) and not _never_moves(eqn) and not (
                name in ("eq", "ne") and not any(x.atom for x in floats)):
            # (eq/ne: a continuous value without atoms equals a given value with probability 0)
            # A live operand moves the jump or moves with it: every continuous random choice any
            # operand depends on may see d/dt E differ from E d/dt (pathwise: z > 0; held
            # fixed: z > t).
            addrs = frozenset().union(*[x.rand for x in floats])
            where = _compat.source_line(eqn)
            disc = disc | frozenset((a, name, where) for a in addrs)
        inf = name in _SHAPE_ONLY and bool(vals) and vals[0].inf
        atom = j.atom or name in _FLAT
        outs = []
        for o in eqn.outvars:
            lv = live and _inexact(o.aval) and name not in _ROUNDING and name not in _CUT
            outs.append(_A(lv, j.rand, j.src, disc, name == "is_finite", inf, atom))
        return outs

    def _select(self, vals):
        pred, cases = vals[0], list(vals[1:])
        if pred.finite and len(cases) == 2:
            # where(isfinite(x), f(x), g(x)): g only ever runs on infinities and NaNs, which a
            # continuous random value is not (almost surely); its jumps are never reached.
            cases[0] = _A(cases[0].live, cases[0].rand, cases[0].src)
        finite_cases = [c for c in cases if not c.inf]
        if len(finite_cases) < len(cases) and finite_cases:
            # where(in_support(x), log_p(x), -inf): taking the infinite case makes the objective
            # infinite, so where its expectation is finite that case has probability zero and the
            # predicate's jump is never crossed (a support check is no discontinuity)
            out = _joinall(finite_cases)
            return _A(out.live, out.rand | pred.rand, out.src | pred.src, out.disc, atom=True)
        return _A(*_depend(_joinall(cases), pred)[:6], atom=True)

    def _site(self, eqn, vals):
        p = eqn.params
        addr = p["addr"]
        if p["observed"]:
            return vals[-1]
        params = _joinall(vals)
        f = self.facts.get(addr)
        continuous = True if f is None else f.continuous
        pathwise = params.live if f is None else f.pathwise
        rand = params.rand | (frozenset({addr}) if continuous or pathwise else frozenset())
        return _A(pathwise, rand, params.src | frozenset({addr}), params.disc)

    def _require(self, eqn, vals):
        for x in vals:
            for a in sorted(x.src, key=str):
                f = self.facts.get(a)
                if f is not None and f.params_live and not f.pathwise:
                    self.violations.append((eqn.params["who"], eqn.params["fix"], fmt_address(a), f))

    def _scan(self, eqn, vals):
        p = eqn.params
        nc, ncar = p["num_consts"], p["num_carry"]
        consts, carry, xs = vals[:nc], list(vals[nc:nc + ncar]), vals[nc + ncar:]
        while True:
            outs = self._closed(p["jaxpr"], list(consts) + carry + list(xs))
            new = [_join(c, o) for c, o in zip(carry, outs[:ncar])]
            if new == carry:
                return carry + outs[ncar:]
            carry = new

    def _while(self, eqn, vals):
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, carry = vals[:cn], vals[cn:cn + bn], list(vals[cn + bn:])
        while True:
            pred = self._closed(p["cond_jaxpr"], list(cconsts) + carry)[0]
            outs = self._closed(p["body_jaxpr"], list(bconsts) + carry)
            # how many times the body runs depends on the predicate
            new = [_depend(_join(c, o), pred) for c, o in zip(carry, outs)]
            if new == carry:
                return carry
            carry = new

    def _cond(self, eqn, vals):
        index, ops = vals[0], vals[1:]
        outs = None
        for b in eqn.params["branches"]:
            o = self._closed(b, list(ops))
            outs = o if outs is None else [_join(x, y) for x, y in zip(outs, o)]
        return [_depend(o, index) for o in outs]

    def _nested(self, eqn, vals):
        # A nested expectation: its sites were estimated by its own selector, which recorded
        # what it saw; its jumps, marks and requirements count for the objective that uses it.
        inner = _Walker(getattr(eqn.params["select"], "facts", {}))
        outs = inner._closed(eqn.params["jaxpr"], list(vals))
        self.marks.extend(inner.marks)
        self.violations.extend(inner.violations)
        v = _joinall(vals)
        return [_A(v.live and _inexact(ov.aval), v.rand | o.rand, v.src | o.src, v.disc | o.disc)
                for o, ov in zip(outs, eqn.outvars)]


_INF = _A(inf=True)
_SHAPE_ONLY = frozenset({"broadcast_in_dim", "convert_element_type", "reshape", "copy", "squeeze",
                         "expand_dims", "neg", "copy_p"})
_FLAT = frozenset({"max", "min", "clamp", "reduce_max", "reduce_min", "cummax", "cummin"})  # flat regions


def _nonfinite(val):
    try:
        return bool(np.all(~np.isfinite(np.asarray(val))))
    except TypeError:
        return False


def _never_moves(eqn):
    """``x != x`` (a NaN test) or ``x == inf``: true or false wherever the value is finite."""
    if eqn.primitive.name not in ("eq", "ne"):
        return False
    a, b = eqn.invars
    return a is b or any(_compat.is_literal(v) and np.all(np.isinf(np.asarray(v.val))) for v in (a, b))


def _open(j):
    return j.jaxpr if isinstance(j, _compat.ClosedJaxpr) else j


def analyze(closed, live_in, facts) -> Analysis:
    """Findings, marks and violated requirements of a flattened objective ``closed``.

    ``live_in[i]``: whether input ``i`` carries a tangent; ``facts``: address -> SiteFacts.
    Only the discontinuities that reach an output through data flow are findings.
    """
    jaxpr = _open(closed)
    w = _Walker(facts)
    ins = [_A(live=bool(lv) and _inexact(v.aval)) for v, lv in zip(jaxpr.invars, live_in)]
    outs = w.jaxpr(jaxpr, ins)
    findings: dict = {}
    for a, prim, where in sorted(frozenset().union(*[o.disc for o in outs]) if outs else (), key=str):
        findings.setdefault(fmt_address(a), []).append(Finding(fmt_address(a), prim, where))
    violations = list({(who, fix, a): (who, fix, a, f) for who, fix, a, f in w.violations}.values())
    return Analysis(findings, list(dict.fromkeys(w.marks)), violations)
