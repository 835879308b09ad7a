"""ADEV: forward-mode differentiation of expected values, in continuation-passing style.

``adev_jvp(closed, key, primals, tangents, select)`` walks the staged objective equation by
equation on dual numbers ``(primal, tangent)`` (``None`` is a symbolic zero tangent).
Ordinary equations are differentiated with ``jax.jvp``. At a random choice the chosen
estimator receives the site's dual parameters and the **continuation**: the rest of the
program as a function of the sampled dual value. Reverse mode comes from JAX, which
linearizes and transposes this forward rule (see ``expectation``): there is no second,
hand-written reverse pass.

Before the walk the objective is *flattened*: calls are inlined and every ``lax.scan`` that
holds random choices is unrolled (its length is static), so each site's continuation is a
straight line of equations. ``lax.cond``/``switch`` with random choices inside is kept: the
branch chosen at run time continues into the rest of the program inside ``lax.switch``.
``while_loop`` with random choices is refused with a named error.

This is the second of two walks over staged programs, on purpose: flattening and plain
sampling (``Sampler``) are handlers of ppl's skeleton (``ppl._interp.run``), but a handler
sees one equation at a time, and an estimator needs the rest of the program as a function
(the continuation) to call zero, one or many times. So the walk here has its own reader of
dual values. It loops over equations and recurses only at continuation points (see "how deep
the walk goes" below); ``debug_nonfinite`` is a context, read once per walk.

The nested-expectation primitive ``expect_p`` (``E(*args)`` inside another objective) is
defined at the end of this module with every rule it has: JAX's (abstract evaluation, and
evaluation/lowering outside an objective, which raise) and the interpreters' (flattening keeps
it, plain evaluation samples its program once, ADEV's walk estimates it with its own key).
"""
from __future__ import annotations

import contextlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ppl import _compat
from ppl._interp import (Handler, SiteHoldingPrimitive, UnsupportedControlFlow, describe, rescan, run,
                         scan_parts, site_addresses)
from ppl._site import Site, det_p, sample_p
from ppl.interpreters import Reemit, rebind_site

from ._estimator import DualSite, instantiate

__all__ = ["adev_jvp", "flatten", "MAX_UNROLL", "debug_nonfinite", "expect_p", "bind_expectation"]

#: Longest ``lax.scan`` holding random choices that ADEV unrolls.
MAX_UNROLL = 512


class _Flatten(Reemit):
    """Re-emit an objective with calls inlined and scans holding random choices unrolled."""

    def sample(self, site):
        return rebind_site(site)

    def deterministic(self, addr, value, batch):
        return det_p.bind(value, addr=addr, batch=batch)

    def nested(self, eqn, invals):
        return _expect_flatten(eqn, invals)

    def scan(self, eqn, invals):
        p = eqn.params
        length = p["length"]
        if length > MAX_UNROLL:
            raise UnsupportedControlFlow(
                f"random choices {describe(site_addresses(p['jaxpr']))} inside lax.scan of length "
                f"{length}: ADEV unrolls scans that hold random choices, up to "
                f"ppl.transforms.adev.MAX_UNROLL = {MAX_UNROLL} iterations. Raise MAX_UNROLL, or "
                "move the random choices out of the scan (sample them all at once with jax.vmap "
                "before it and pass them in as xs).")
        consts, carry, xs = scan_parts(eqn, invals)
        ncar = p["num_carry"]
        ys = [None] * length
        order = range(length - 1, -1, -1) if p["reverse"] else range(length)
        for t in order:
            outs = run(p["jaxpr"], list(consts) + list(carry) + [x[t] for x in xs], self)
            carry, ys[t] = outs[:ncar], outs[ncar:]
        stacked = [jnp.stack([y[j] for y in ys]) for j in range(len(ys[0]))] if ys and ys[0] else []
        return list(carry) + stacked


def flatten(closed, args):
    """The objective as a ClosedJaxpr with calls inlined and site-holding scans unrolled."""
    return jax.make_jaxpr(lambda *a: run(closed, list(a), _Flatten()))(*args)


def _is_float0(t):
    return t is not None and getattr(t, "dtype", None) == jax.dtypes.float0


class _Ctx:
    """What the whole walk shares: the estimator selector, and whether to check for non-finite
    numbers at each site (read once from ``debug_nonfinite`` when the walk starts)."""

    def __init__(self, select, debug):
        self.select = select
        self.debug = debug


def _read(env, v):  # constants carry no tangent
    return _compat.read(env, v, lambda c: (c, None))


def _jvp_eqn(eqn, duals):
    primals = [p for p, _ in duals]
    live = [i for i, (_, t) in enumerate(duals) if t is not None]
    if not live:
        return [(o, None) for o in _compat.bind_eqn(eqn, primals)]

    def f(*xs):  # only operands with a tangent are differentiated: no zero tangents materialize
        args = list(primals)
        for i, x in zip(live, xs):
            args[i] = x
        return _compat.bind_eqn(eqn, args)

    outs, out_t = jax.jvp(f, [primals[i] for i in live], [duals[i][1] for i in live])
    return [(o, None if _is_float0(t) or not jnp.issubdtype(jnp.result_type(o), jnp.inexact) else t)
            for o, t in zip(outs, out_t)]


def _eval(eqns, i, env, key, finish, ctx):
    """Evaluate ``eqns[i:]`` then ``finish(env, key)``; returns the program's dual outputs."""
    while i < len(eqns):
        eqn = eqns[i]
        duals = [_read(env, v) for v in eqn.invars]
        prim = eqn.primitive
        if prim is sample_p and eqn.params["observed"]:
            outs = [duals[-1]]  # an observation inside an objective is just its value
        elif prim is sample_p:
            return _site(eqns, i, env, key, finish, ctx, duals)
        elif prim.name == "cond" and any(site_addresses(b) for b in eqn.params["branches"]):
            return _cond(eqns, i, env, key, finish, ctx, duals)
        elif prim is expect_p:
            key, sub = jax.random.split(key)
            outs = _expect_adev(eqn, sub, duals, ctx)
        elif prim is det_p:
            outs = duals
        else:
            outs = _jvp_eqn(eqn, duals)
        for v, d in zip(eqn.outvars, outs):
            env[v] = d
        i += 1
    return finish(env, key)


def _site(eqns, i, env, key, finish, ctx, duals):
    eqn = eqns[i]
    site = Site.from_eqn_values(eqn.params, [p for p, _ in duals])
    tangents = [t for _, t in duals]
    dsite = DualSite(site, tangents, rest_is_random=_random_after(eqns, i + 1) or finish.random)
    est = ctx.select(dsite)
    outvar = eqn.outvars[0]
    if ctx.debug:
        _check_site(site, [("parameter", x) for x in site.leaves] + [("parameter tangent", t) for t in tangents])

    def kont(k, x, dx):
        if ctx.debug:
            _check_site(site, [("value", x), ("value tangent", dx),
                               ("log density", lambda: site.dist().log_prob(x))])
        env2 = dict(env)
        if dx is not None and not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            dx = None
        env2[outvar] = (x, dx)
        return _eval(eqns, i + 1, env2, k, finish, ctx)

    return est.jvp(key, dsite, kont)  # the estimator splits it between its draws and kont


def _random_after(eqns, start):
    """Whether ``eqns[start:]`` make random choices (then the continuation needs its own key)."""
    for eqn in eqns[start:]:
        if eqn.primitive is sample_p or eqn.primitive is expect_p:
            return True
        if any(site_addresses(s) for s in _compat.jaxprs_in_params(eqn.params)):
            return True
    return False


def _cond(eqns, i, env, key, finish, ctx, duals):
    eqn = eqns[i]
    index = duals[0][0]
    ops = duals[1:]

    def branch(closed):
        def run_branch():
            benv = {}
            for v, c in zip(closed.jaxpr.constvars, closed.consts):
                benv[v] = (c, None)
            for v, d in zip(closed.jaxpr.invars, ops):
                benv[v] = d

            def bfinish(benv2, k):
                env2 = dict(env)
                for ov, bv in zip(eqn.outvars, closed.jaxpr.outvars):
                    env2[ov] = _read(benv2, bv)
                return _eval(eqns, i + 1, env2, k, finish, ctx)

            bfinish.random = _random_after(eqns, i + 1) or finish.random

            return _eval(closed.jaxpr.eqns, 0, benv, key, bfinish, ctx)

        return run_branch

    return jax.lax.switch(index, [branch(b) for b in eqn.params["branches"]])


def adev_jvp(flat_closed, key, primals, tangents, select):
    """Dual outputs ``(outs, out_tangents)`` of a flattened objective (lists of arrays)."""
    env = {}
    for v, c in zip(flat_closed.jaxpr.constvars, flat_closed.consts):
        env[v] = (c, None)
    for v, p, t in zip(flat_closed.jaxpr.invars, primals, tangents):
        if _is_float0(t) or not jnp.issubdtype(jnp.result_type(p), jnp.inexact):
            t = None
        env[v] = (p, t)

    def finish(env_, k):
        outs = [_read(env_, v) for v in flat_closed.jaxpr.outvars]
        return [p for p, _ in outs], [instantiate(p, t) for p, t in outs]

    finish.random = False

    eqns = flat_closed.jaxpr.eqns
    with _room_for(_continuation_points(eqns)):
        return _eval(eqns, 0, env, key, finish, _Ctx(select, _DEBUG.value))


# --- how deep the walk goes ---------------------------------------------------------------------
#
# The walk iterates over equations: ordinary equations, observations, records and nested
# expectations add no Python frame. It recurses at *continuation points* only: a random choice
# (its estimator calls the rest of the program, ``kont``, which walks on from there) and a
# ``lax.cond`` holding random choices (each branch walks on into the rest of the program inside
# ``lax.switch``). The depth is therefore bounded by the number of continuation points of the
# flattened objective times the frames one of them adds (the estimator's own calls, JAX's
# ``vmap``/``lax.map``/``switch`` tracing around ``kont``), not by the program's length.

#: An upper bound on the Python frames one continuation point adds to the walk (measured at
#: 7 (Reparam, ScoreFunction) to 22 (MVD) for the shipped estimators, 19 per
#: ``lax.cond``; tests/transforms/test_adev_depth.py checks the bound).
FRAMES_PER_POINT = 64


def _continuation_points(eqns) -> int:
    n = 0
    for eqn in eqns:
        if eqn.primitive is sample_p and not eqn.params["observed"]:
            n += 1
        elif eqn.primitive.name == "cond" and any(site_addresses(b) for b in eqn.params["branches"]):
            n += 1 + max(_continuation_points(b.jaxpr.eqns) for b in eqn.params["branches"])
    return n


def _depth() -> int:
    frame, n = sys._getframe(), 0
    while frame is not None:
        frame, n = frame.f_back, n + 1
    return n


@contextlib.contextmanager
def _room_for(points: int):
    """Make room for ``points`` continuation points above the current depth, for this walk only.

    Python's recursion limit is raised only when the walk needs it (a few hundred random
    choices at the default limit of 1000), to ``depth + FRAMES_PER_POINT * (points + 4)``,
    and put back when the walk ends (unless something else changed it meanwhile).
    """
    old = sys.getrecursionlimit()
    need = _depth() + FRAMES_PER_POINT * (points + 4)
    if need <= old:
        yield
        return
    sys.setrecursionlimit(need)
    try:
        yield
    finally:
        if sys.getrecursionlimit() == need:
            sys.setrecursionlimit(old)


# --- checking for non-finite numbers ----------------------------------------------------------

# Whether ``debug_nonfinite`` is open: a thread-local JAX configuration state, part of
# ``jax.jit``'s cache key (a function traced inside the context is retraced outside it).
_DEBUG = _compat.jit_keyed_state("ppl_adev_debug_nonfinite", False,
                                 "ppl.transforms.adev.debug_nonfinite is open")


@contextlib.contextmanager
def debug_nonfinite():
    """Check every random choice for non-finite numbers while ADEV runs *eagerly*.

    Inside this context, when the values are concrete (e.g. ``jax.jvp`` of an estimate run
    outside ``jit``), ADEV checks each site's parameters, their tangents, the sampled value
    and its log density, and raises ``FloatingPointError`` naming the first site where one is
    not finite. ``fit(..., debug=True)`` uses it to name the site of a non-finite step.
    """
    with _DEBUG(True):
        yield


def _check_site(site, items):
    for what, x in items:
        if callable(x):
            x = x()
        if x is None or isinstance(x, jax.core.Tracer) or getattr(x, "dtype", None) == jax.dtypes.float0:
            continue
        arr = np.asarray(x)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise FloatingPointError(f"random choice {site.name!r} ({site.dist().name}): its {what} is "
                                     f"not finite ({arr if arr.size <= 4 else arr.ravel()[:4]}...)")


class Sampler(Handler):
    """Plain evaluation of an objective: every random choice is sampled (no trace kept)."""

    def __init__(self, key):
        self.key = key

    def sample(self, site):
        if site.obs is not None:
            return site.obs
        self.key, sub = jax.random.split(self.key)
        return site.dist().sample(sub)

    def nested(self, eqn, invals):
        self.key, sub = jax.random.split(self.key)
        return _expect_sample(eqn, invals, sub)

    def scan(self, eqn, invals):
        self.key, sub = jax.random.split(self.key)
        keys = jax.random.split(sub, eqn.params["length"])
        outs, _ = rescan(eqn, invals, Sampler, keys)
        return outs

    def cond(self, eqn, invals):
        self.key, sub = jax.random.split(self.key)
        branches = [lambda *o, b=b: run(b, list(o), Sampler(sub)) for b in eqn.params["branches"]]
        return jax.lax.switch(invals[0], branches, *invals[1:])


# --- the nested-expectation primitive, and every rule it has -----------------------------------

expect_p = SiteHoldingPrimitive("ppl_expectation")
expect_p.multiple_results = True


def bind_expectation(closed, flat, select):
    """``E(*args)`` inside an objective: one ``expect_p`` equation holding the staged objective.

    Its constants become leading operands (so they get tangents); ``select`` resolves the
    inner sites' estimators when ADEV's walk reaches the equation.
    """
    jaxpr = _compat.ClosedJaxpr(_compat.lift_consts(closed.jaxpr), [])
    return expect_p.bind(*closed.consts, *flat, jaxpr=jaxpr, select=select)


def _expect_abstract(*args, jaxpr, select):
    return [v.aval for v in jaxpr.jaxpr.outvars]


def _expect_impl(*args, jaxpr, select):
    raise RuntimeError("a nested expectation was evaluated outside an objective; call "
                       "expectation(objective).estimate(key, *args) at the top level")


expect_p.def_abstract_eval(_expect_abstract)
expect_p.def_impl(_expect_impl)
_compat.register_lowering(expect_p, lambda ctx, *a, **kw: _expect_impl())


def _expect_flatten(eqn, invals):
    """Flattening keeps the equation: its program is flattened when ADEV's walk reaches it."""
    return _compat.bind_eqn(eqn, invals)


def _expect_sample(eqn, invals, key):
    """Plain evaluation: one sample of the nested objective's value."""
    return run(eqn.params["jaxpr"], invals, Sampler(key))


def _expect_adev(eqn, key, duals, ctx):
    """ADEV's rule: the nested objective's own dual estimate, from its own key."""
    closed = eqn.params["jaxpr"]
    flat = flatten(closed, [p for p, _ in duals])
    outs, touts = adev_jvp(flat, key, [p for p, _ in duals], [t for _, t in duals], eqn.params["select"])
    return list(zip(outs, touts))
