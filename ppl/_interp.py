"""The interpreter skeleton: one handler-driven walk of staged programs.

``run(closed_jaxpr, args, handler)`` evaluates a staged program equation by equation (a loop)
in the current JAX trace. Ordinary equations are re-bound as they are; random choices go to
``handler.sample``; deterministic records to ``handler.deterministic``; equations of a
:class:`SiteHoldingPrimitive` to ``handler.nested``. :class:`Handler` declares everything the
walk relies on. Higher-order primitives get one rule each:

- call-like (``jit``, ``closed_call``, ``remat``): inlined when they contain random choices;
- ``scan``: ``handler.scan`` (threads the handler's state through ``lax.scan``);
- ``cond``: ``handler.cond``;
- ``while``, custom derivatives and anything else holding random choices: a named error.

Equations whose sub-programs hold no random choice are re-bound untouched, so ``jit`` and
``scan`` structure survives and compile time stays low.

Every interpreter of ``ppl`` runs on this walk, and ADEV uses it to flatten and to sample
objectives. ADEV's differentiation is a second walk (``ppl.transforms.adev._eval``,
continuation-passing on dual numbers), because an estimator needs the rest of the program as
a function, which a per-equation handler cannot give; transforms/README.md, "Two walks".
"""
from __future__ import annotations

import functools

import jax

from . import _compat
from ._effects import guard
from ._site import Site, det_p, fmt_address, sample_p

__all__ = ["run", "stage", "Handler", "SiteHoldingPrimitive", "contains_sites", "site_addresses",
           "UnsupportedControlFlow"]


class UnsupportedControlFlow(NotImplementedError):
    """A random choice sits inside control flow that this transformation cannot handle."""


class SiteHoldingPrimitive(_compat.Primitive):
    """A primitive whose equations hold random choices of their own (ADEV's nested expectation).

    The property ``holds_random_choices`` is what the walk reads: such an equation is handed
    to ``Handler.nested`` whole, and counts as one random choice in ``site_addresses``.
    Higher layers define their primitives with it (no registry of names here).
    """

    holds_random_choices = True


def _holds_random_choices(prim) -> bool:
    return getattr(prim, "holds_random_choices", False)


@functools.lru_cache(maxsize=4096)
def _sites_of(jaxpr) -> tuple:
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive is sample_p:
            found.append(eqn.params["addr"])
        elif _holds_random_choices(eqn.primitive):
            found.append(("<expectation>",))
        else:
            for sub in _compat.jaxprs_in_params(eqn.params):
                found.extend(_sites_of(sub))
    return tuple(found)


def _open(j):
    return j.jaxpr if isinstance(j, _compat.ClosedJaxpr) else j


def site_addresses(jaxpr) -> tuple:
    """Addresses of the random choices in a (closed) jaxpr, nested ones included."""
    return _sites_of(_open(jaxpr))


def _latent_of(jaxpr) -> list:
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive is sample_p:
            if not eqn.params["observed"]:
                found.append(eqn.params["addr"])
        else:
            for sub in _compat.jaxprs_in_params(eqn.params):
                found.extend(_latent_of(sub))
    return found


def latent_addresses(jaxpr) -> tuple:
    """Addresses of the unobserved random choices in a (closed) jaxpr, nested ones included.

    Static: a choice inside one branch of ``lax.cond`` is listed even if that branch does not run.
    """
    return tuple(_latent_of(_open(jaxpr)))


def contains_sites(jaxpr) -> bool:
    return bool(site_addresses(jaxpr))


def describe(addrs) -> str:
    names = sorted({fmt_address(a) for a in addrs})
    shown = ", ".join(repr(n) for n in names[:6])
    return shown + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _read(env, v):
    return _compat.read(env, v)


class Handler:
    """What a transformation does at random choices: the protocol the walk relies on.

    ``eval_eqn`` calls ``sample(site)`` at each random choice (returns its value),
    ``deterministic(addr, value, batch)`` at each record, ``nested(eqn, invals)`` at each
    equation of a :class:`SiteHoldingPrimitive`, ``scan(eqn, invals)`` and
    ``cond(eqn, invals)`` at ``lax.scan`` / ``lax.cond`` holding random choices (all return
    the equation's outputs). ``rescan`` builds a fresh handler per scan iteration and stacks
    what its ``scan_outputs()`` returns. Subclasses override what they need; the defaults of
    ``nested``, ``scan`` and ``cond`` refuse with a named error (``sample`` has none).
    """

    def sample(self, site: Site):
        raise NotImplementedError

    def deterministic(self, addr, value, batch):
        return value

    def nested(self, eqn, invals):
        """An equation of a ``SiteHoldingPrimitive`` (a nested expectation)."""
        raise UnsupportedControlFlow(f"{eqn.primitive.name} is not supported by this interpreter")

    def scan_outputs(self):
        """What one scan iteration's handler hands back to ``rescan`` (a pytree of arrays)."""
        return ()

    def scan(self, eqn, invals):
        raise UnsupportedControlFlow(
            f"random choices {describe(site_addresses(eqn.params['jaxpr']))} inside lax.scan are "
            "not supported by this interpreter.")

    def cond(self, eqn, invals):
        addrs = [a for b in eqn.params["branches"] for a in site_addresses(b)]
        raise UnsupportedControlFlow(
            f"random choices {describe(addrs)} inside lax.cond/lax.switch are not supported by this "
            "interpreter. Workaround: sample unconditionally and select the value with jnp.where, "
            "or make the choice's distribution depend on the condition.")


def stage(fn, args):
    """Stage ``fn(*args)`` (args any pytree): ``(closed_jaxpr, flat_args, out_treedef)``."""
    flat, in_tree = jax.tree_util.tree_flatten(args)

    def flat_fn(*leaves):
        return fn(*jax.tree_util.tree_unflatten(in_tree, leaves))

    with guard():  # NumPyro's own effect primitives inside the program are refused by name
        closed, out_tree = _compat.make_jaxpr(flat_fn, *flat)
    return closed, flat, out_tree


def run(closed, args, handler: Handler):
    """Evaluate ``closed`` (a ClosedJaxpr) on ``args`` with ``handler`` at random choices."""
    return eval_jaxpr(closed.jaxpr, closed.consts, args, handler)


def eval_jaxpr(jaxpr, consts, args, handler: Handler):
    env = {}
    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for eqn in jaxpr.eqns:
        invals = [_read(env, v) for v in eqn.invars]
        outvals = eval_eqn(eqn, invals, handler)
        for v, x in zip(eqn.outvars, outvals):
            env[v] = x
    return [_read(env, v) for v in jaxpr.outvars]


def eval_eqn(eqn, invals, handler: Handler):
    """Evaluate one equation (used by ``eval_jaxpr`` and by ADEV's interpreter)."""
    prim = eqn.primitive
    if prim is sample_p:
        return [handler.sample(Site.from_eqn_values(eqn.params, invals))]
    if prim is det_p:
        return [handler.deterministic(eqn.params["addr"], invals[0], eqn.params["batch"])]
    if _holds_random_choices(prim):
        return handler.nested(eqn, invals)
    name = prim.name
    subs = list(_compat.jaxprs_in_params(eqn.params))
    if not subs or not any(contains_sites(s) for s in subs):
        return _compat.bind_eqn(eqn, invals)
    if name in _compat.CALL_PRIMITIVES:
        return run(_compat.call_jaxpr_of(eqn), invals, handler)
    if name == "scan":
        return handler.scan(eqn, invals)
    if name == "cond":
        return handler.cond(eqn, invals)
    addrs = [a for s in subs for a in site_addresses(s)]
    if name == "while":
        raise UnsupportedControlFlow(
            f"random choices {describe(addrs)} inside lax.while_loop (or a fori_loop with traced "
            "bounds): the number of random choices is not known when the program is staged. "
            "Workaround: use lax.scan or lax.fori_loop with Python-int bounds (a fixed trip count), "
            "masking the iterations you do not need.")
    if name in _compat.CUSTOM_DERIVATIVE_PRIMITIVES:
        raise UnsupportedControlFlow(
            f"random choices {describe(addrs)} inside a function with a custom derivative "
            "(jax.custom_jvp / jax.custom_vjp): its rule cannot see them. Move the random choices "
            "out of the custom-derivative function and pass their values in.")
    raise UnsupportedControlFlow(
        f"random choices {describe(addrs)} inside the higher-order primitive {name!r}, which ppl's "
        "interpreters do not support. Move the random choices out of it.")


# ---------------------------------------------------------------------------------------
# helpers shared by handlers that re-trace scan and cond bodies


def scan_parts(eqn, invals):
    p = eqn.params
    nc, ncar = p["num_consts"], p["num_carry"]
    return invals[:nc], invals[nc:nc + ncar], invals[nc + ncar:]


def rescan(eqn, invals, body_handler_fn, extra_xs=None):
    """Re-emit a scan whose body runs under a fresh handler per iteration.

    ``body_handler_fn(extra_x) -> handler`` builds the body's handler from this iteration's
    slice of ``extra_xs``; the handler's ``scan_outputs()`` are stacked and returned with the
    scan's own outputs: ``(outs, stacked_handler_outputs)``.
    """
    p = eqn.params
    consts, init, xs = scan_parts(eqn, invals)
    body = p["jaxpr"]
    ncar = p["num_carry"]

    def step(carry, x):
        orig, extra = x
        h = body_handler_fn(extra)
        outs = run(body, list(consts) + list(carry) + list(orig), h)
        return outs[:ncar], (outs[ncar:], h.scan_outputs())

    carry, (ys, hout) = jax.lax.scan(step, list(init), (list(xs), extra_xs), length=p["length"],
                                     reverse=p["reverse"], unroll=p["unroll"])
    return list(carry) + list(ys), hout
