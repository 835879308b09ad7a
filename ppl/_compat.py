"""Every call into JAX internals lives here (JAX 0.10.2).

Keeping them in one module means one place to fix when JAX moves things.
"""
from __future__ import annotations

import jax
import jax.extend.core as jex
from jax._src import source_info_util as _source_info
from jax.extend.core.primitives import stop_gradient_p as _stop_gradient_p
from jax._src.interpreters import batching as _batching
from jax._src.interpreters import partial_eval as _pe
from jax.interpreters import ad as _ad
from jax.interpreters import mlir as _mlir

Primitive = jex.Primitive
ClosedJaxpr = jex.ClosedJaxpr
Jaxpr = jex.Jaxpr
Literal = jex.Literal
Var = jex.Var
jaxprs_in_params = jex.jaxprs_in_params

primitive_batchers = _batching.primitive_batchers
# Batching rules called even when no operand is batched (they receive the axis data).
fancy_primitive_batchers = _batching.fancy_primitive_batchers
moveaxis = _batching.moveaxis
primitive_jvps = _ad.primitive_jvps
register_lowering = _mlir.register_lowering

# Names of the higher-order primitives the interpreters treat specially.
CALL_PRIMITIVES = frozenset({"jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint", "remat"})
CUSTOM_DERIVATIVE_PRIMITIVES = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})


def _stop_gradient_transpose(ct, x):
    return [ct]


def ensure_stop_gradient_transpose():
    """Give ``stop_gradient`` the transpose rule of the identity, unless JAX has one.

    JAX's batching rule for ``cond`` with a batched predicate runs every branch and feeds
    branch ``i`` ``select(index == i, x, stop_gradient(x))`` for each operand ``x``
    (jax-ml/jax#22011, #39219, still so on 0.10.2). When ``x`` is a tangent, that
    ``stop_gradient`` lands in the linear program JAX transposes for reverse mode, and
    ``stop_gradient`` has no transpose rule: ``jax.grad`` of any ``custom_jvp`` whose rule
    holds a ``cond`` on a batched predicate fails with "Transpose rule ... for
    'stop_gradient' not implemented". ADEV's rule is such a function: its estimators vmap the
    continuation (Enum, MVD, ...), and users vmap objectives over keys and data.

    On values ``stop_gradient`` is the identity, so the identity's transpose is its transpose
    on a linear program: reverse mode then agrees with forward mode (``jax.jvp``, unchanged),
    and lineax and diffrax register the same rule. In the batched ``cond`` it acts only on the
    lanes whose branch output is discarded, where the cotangent is zero; a derivative that is
    not finite there (a ``sqrt`` the ``cond`` guards, evaluated on the lanes it does not apply
    to) makes that zero a NaN (transforms/README.md, sharp edges). Registered once, when
    ``ppl`` is imported; a rule JAX or another library registered first is kept.
    """
    _ad.primitive_transposes.setdefault(_stop_gradient_p, _stop_gradient_transpose)


ensure_stop_gradient_transpose()


def bind_params(eqn) -> dict:
    """Parameters to re-bind an equation's primitive (on 0.10.2 this returns the dict alone)."""
    out = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(out, tuple):  # older JAX returned (subfuns, params)
        raise RuntimeError("unsupported JAX version: get_bind_params returned a pair; use JAX 0.10.x")
    return out


def bind_eqn(eqn, invals):
    """Evaluate one equation on values of the current trace.

    Inside ``shard_map(..., check_vma=True)`` a value an interpreter substitutes (a draw from a
    per-device key, a guide parameter computed from sharded data) can vary over mesh axes where
    the staged program's value did not, and raw ``bind`` refuses the mix. Inserting JAX's casts
    here made reverse-mode gradients wrong (measured), so this refuses it with the fix instead.
    """
    try:
        # keep the equation's source line (JAX records it again at bind) so that re-emitted
        # programs point at the user's code, not at the interpreter's
        with _source_info.user_context(eqn.source_info.traceback, name_stack=eqn.source_info.name_stack):
            out = eqn.primitive.bind(*invals, **bind_params(eqn))
    except ValueError as e:
        if "varying manual axes" in str(e) or "invariant->variant" in str(e):
            raise ValueError(
                f"ppl: {eqn.primitive.name} mixes values that vary over shard_map's mesh axes with values "
                "that do not, which ppl's interpreters do not track. Pass check_vma=False to "
                "jax.shard_map and combine the per-device gradients yourself (jax.lax.pmean or psum); "
                f"JAX said: {e}") from None
        raise
    return out if eqn.primitive.multiple_results else [out]


def call_jaxpr_of(eqn):
    """The inner ClosedJaxpr of a call-like equation (jit, closed_call, remat)."""
    inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if isinstance(inner, ClosedJaxpr):
        return inner
    return ClosedJaxpr(inner, ())


def is_literal(v) -> bool:
    return isinstance(v, Literal)


def read(env, v, literal=None):
    """An equation input's value in a walk's environment ``env`` (keyed by jaxpr variables);
    a literal's constant, passed through ``literal`` when given (each walk wraps constants
    in its own kind of value)."""
    if isinstance(v, Literal):
        return v.val if literal is None else literal(v.val)
    return env[v]


def make_jaxpr(fn, *args):
    """Stage ``fn(*args)`` to a ClosedJaxpr; returns (closed_jaxpr, out_treedef)."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    return closed, jax.tree_util.tree_structure(out_shape)


def lift_consts(jaxpr):
    """A jaxpr whose constvars become leading invars (so consts can be given tangents)."""
    return _pe.convert_constvars_jaxpr(jaxpr)


def lower_fun(fn, multiple_results):
    return _mlir.lower_fun(fn, multiple_results=multiple_results)


def instantiate_zeros(t):
    return _ad.instantiate_zeros(t)


def source_line(eqn) -> str:
    """Where JAX recorded ``eqn`` (the user's file:line, JAX's own frames skipped)."""
    return _source_info.summarize(eqn.source_info)


def custom_primal_jaxpr(eqn):
    """The primal (ClosedJaxpr) of a custom_jvp_call / custom_vjp_call equation."""
    p = eqn.params
    inner = p.get("call_jaxpr", p.get("fun_jaxpr"))
    if isinstance(inner, ClosedJaxpr):
        return inner
    return ClosedJaxpr(inner, ())


def jit_keyed_state(name: str, default, help: str):
    """A thread-local trace-time value that is part of ``jax.jit``'s cache key.

    ``state.value`` reads it; ``with state(new):`` sets it for a block. A jitted function
    traced under one value is retraced under another (not served from the cache), so a
    static setting such as the open ``ppl.plate`` contexts reaches the sites inside it.
    """
    from jax._src import config as _config

    return _config.State(name, default, help, include_in_jit_key=True, include_in_trace_context=True)
