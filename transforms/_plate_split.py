"""Per-element continuations along a plate: verify that the rest of the program is a sum of
per-element terms, and compute those terms.

Inside ``ppl.plate`` the elements of a site's value ``x`` are conditionally independent. An
estimator can exploit it when the continuation (the rest of the objective) decomposes as

    k(x) = c + sum_i h_i(x_i)          (every output, value and tangent)

with ``c`` not depending on ``x`` and ``h_i`` depending on ``x`` only through element ``i``
(along the plate's dimension). Then ``E[k] = c + sum_i E[h_i(x_i)]``: enumeration needs ``K``
evaluations of the continuation at ``x = (v, v, ..., v)`` for the ``K`` values ``v`` (not
``K^n``), a measure-valued derivative replaces every element at once (not one at a time), and
the score function may weight each ``h_i`` by element ``i``'s own score only (Rao-Blackwellized
along the plate).

Nothing is asked of the user beyond writing the program as usual: :func:`split` stages the
continuation at ``x`` and *proves* the decomposition by an abstract interpretation of the
staged program, each value being one of

- ``C``: does not depend on ``x``;
- ``A(axis)``: an array with the plate's dimension at ``axis`` whose slice ``i`` depends on
  ``x`` only through ``x_i`` (``x`` itself, elementwise arithmetic on it, indexing with it,
  broadcasts, reductions over other dimensions, ...);
- ``S``: ``base + sum_i per[i]``, kept as the pair ``(base, per)``: a ``jnp.sum`` over the
  plate's dimension of an ``A`` value (or a ``dot`` contracting it), and sums, differences,
  negations, reshapes and products with ``C`` values of such (linear operations).

Every output must end as ``C`` or ``S``. Any other operation on an ``A`` or ``S`` value (a
``logsumexp`` over the plate's dimension, a product of two sums, a ``lax.map`` of a later
site's estimator, a primitive this walk does not know, ...) raises :class:`NotSeparable`
naming it and its source line, and the estimator falls back to the joint treatment (the plan
says so). The decomposition is thus never assumed: it is what the staged program computes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ppl import _compat

__all__ = ["NotSeparable", "split", "plate_axis"]


class NotSeparable(Exception):
    """The continuation is not (provably) a sum of per-element terms along the plate."""


# primitives applied elementwise to equally shaped operands
_ELEMENTWISE = frozenset("""
add sub mul div neg exp exp2 log log1p expm1 tanh logistic sin cos tan asin acos atan sinh cosh
asinh acosh atanh abs sign floor ceil round is_finite max min pow integer_pow sqrt rsqrt cbrt
square select_n eq ne lt le gt ge and or not xor convert_element_type erf erfc erf_inv lgamma
digamma igamma igammac polygamma zeta nextafter rem atan2 clamp add_any copy copy_p real imag
shift_left shift_right_logical shift_right_arithmetic population_count stop_gradient
reduce_precision bessel_i0e bessel_i1e regularized_incomplete_beta random_gamma_grad
""".split())
# linear in all operands jointly: applied to the base and to every per-element term
_LINEAR = frozenset("""
add sub neg add_any reduce_sum broadcast_in_dim reshape squeeze convert_element_type transpose
copy copy_p expand_dims
""".split())
_REDUCE_KEEP = frozenset("""
reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin
""".split())
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "remat2", "checkpoint", "remat"})
_CUSTOM = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})


class _C:
    __slots__ = ("val",)

    def __init__(self, val):
        self.val = val


class _A:
    __slots__ = ("val", "axis")

    def __init__(self, val, axis):
        self.val, self.axis = val, axis


class _S:
    __slots__ = ("base", "per")

    def __init__(self, base, per):
        self.base, self.per = base, per


def _refuse(eqn, what):
    raise NotSeparable(f"{what} at {eqn.primitive.name} ({_compat.source_line(eqn)})")


def _read(env, v):
    return _compat.read(env, v, _C)


def _bind(eqn, vals):
    return _compat.bind_eqn(eqn, vals)


def _run(closed, ins, n):
    env = {}
    for v, c in zip(closed.jaxpr.constvars, closed.consts):
        env[v] = _C(c)
    for v, a in zip(closed.jaxpr.invars, ins):
        env[v] = a
    for eqn in closed.jaxpr.eqns:
        outs = _eqn(eqn, [_read(env, v) for v in eqn.invars], n)
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [_read(env, v) for v in closed.jaxpr.outvars]


def _eqn(eqn, ins, n):
    name = eqn.primitive.name
    if all(isinstance(a, _C) for a in ins):
        return [_C(o) for o in _bind(eqn, [a.val for a in ins])]
    if name in _CALLS:
        return _run(_compat.call_jaxpr_of(eqn), ins, n)
    if name in _CUSTOM:  # evaluate the primal function (no derivative is taken here)
        inner = _compat.custom_primal_jaxpr(eqn)
        return _run(inner, ins[len(ins) - len(inner.jaxpr.invars):], n)
    if name == "scan":
        return _scan(eqn, ins, n)
    if any(isinstance(a, _S) for a in ins):
        return [_sum_rule(eqn, ins, n)]
    return [_aligned_rule(eqn, ins, n)]


#: Longest ``lax.scan`` over values depending on the site that the walk unrolls (a later
#: site's ``lax.map`` of continuation calls is one).
MAX_SCAN = 64


def _scan(eqn, ins, n):
    """Unroll a short scan (e.g. ``lax.map`` of a later site's continuation calls)."""
    p = eqn.params
    length, nc, ncar = p["length"], p["num_consts"], p["num_carry"]
    if length > MAX_SCAN:
        _refuse(eqn, f"a lax.scan of length {length} > MAX_SCAN = {MAX_SCAN} over values depending on the site")
    consts, carry, xs = list(ins[:nc]), list(ins[nc:nc + ncar]), ins[nc + ncar:]
    if any(isinstance(x, _A) and x.axis == 0 for x in xs):
        _refuse(eqn, "a lax.scan along the plate's dimension")
    ys = [None] * length
    for t in (range(length - 1, -1, -1) if p["reverse"] else range(length)):
        outs = _run(p["jaxpr"], consts + carry + [_index(x, t) for x in xs], n)
        carry, ys[t] = outs[:ncar], outs[ncar:]
    return carry + [_stack(eqn, [y[j] for y in ys], n) for j in range(len(ys[0]) if ys else 0)]


def _index(a, t):
    if isinstance(a, _C):
        return _C(a.val[t])
    if isinstance(a, _A):
        return _A(a.val[t], a.axis - 1)
    return _S(a.base[t], a.per[:, t])


def _stack(eqn, parts, n):
    if all(isinstance(a, _C) for a in parts):
        return _C(jnp.stack([a.val for a in parts]))
    if all(isinstance(a, _A) for a in parts) and len({a.axis for a in parts}) == 1:
        return _A(jnp.stack([a.val for a in parts]), parts[0].axis + 1)
    if any(isinstance(a, _A) for a in parts):
        _refuse(eqn, "a lax.scan whose outputs mix per-element arrays with other values")
    sums = [a if isinstance(a, _S) else _S(a.val, _zeros_per(a, n)) for a in parts]
    return _S(jnp.stack([a.base for a in sums]), jnp.stack([a.per for a in sums], 1))


def _zeros_per(a, n):
    return jnp.zeros((n,) + jnp.shape(a.val), jnp.result_type(a.val))


def _sum_rule(eqn, ins, n):
    """An operation on a sum of per-element terms: only linear ones keep the decomposition."""
    name = eqn.primitive.name
    if any(isinstance(a, _A) for a in ins):
        _refuse(eqn, "a per-element array combined with a sum over the plate")
    if name == "convert_element_type" and not jnp.issubdtype(eqn.params["new_dtype"], jnp.inexact):
        _refuse(eqn, "a sum over the plate cast to an integer")
    if name in _LINEAR:
        base = _bind(eqn, [a.base if isinstance(a, _S) else a.val for a in ins])[0]
        pers = [a.per if isinstance(a, _S) else _zeros_per(a, n) for a in ins]
        per = jax.vmap(lambda *ps: _bind(eqn, list(ps))[0])(*pers)
        return _S(base, per)
    sums = [i for i, a in enumerate(ins) if isinstance(a, _S)]
    if name in ("mul", "dot_general") and len(sums) == 1 or name == "div" and sums == [0]:
        j = sums[0]
        vals = [a.val if isinstance(a, _C) else None for a in ins]

        def apply(x):
            vs = list(vals)
            vs[j] = x
            return _bind(eqn, vs)[0]

        return _S(apply(ins[j].base), jax.vmap(apply)(ins[j].per))
    _refuse(eqn, "a nonlinear operation on a sum over the plate" if name not in ("mul", "div") else
            "a product of two sums over the plate (cross terms between elements)")


def _aligned_rule(eqn, ins, n):
    """An operation on per-element arrays (and values not depending on the site)."""
    name = eqn.primitive.name
    p = eqn.params
    vals = [a.val for a in ins]
    axes = {a.axis for a in ins if isinstance(a, _A)}
    if name in _ELEMENTWISE:
        out = _bind(eqn, vals)[0]
        # operands may differ from the output in size-1 dimensions (broadcast), never in the plate's
        if len(axes) != 1 or any(isinstance(a, _A) and (jnp.ndim(a.val) != out.ndim or
                                                        jnp.shape(a.val)[a.axis] != out.shape[a.axis])
                                 for a in ins):
            _refuse(eqn, "per-element arrays with their plate dimensions at different positions")
        return _A(out, axes.pop())
    if len(ins) == 1 or name in ("dot_general", "gather", "dynamic_slice", "concatenate", "pad"):
        pass
    else:
        _refuse(eqn, "an operation this walk does not know on a per-element array")
    x = ins[0]
    out = None
    if name == "broadcast_in_dim":
        out = _A(_bind(eqn, vals)[0], p["broadcast_dimensions"][x.axis])
    elif name == "reshape":
        o = _bind(eqn, vals)[0]
        before = int(np.prod(jnp.shape(x.val)[:x.axis]))
        for k, size in enumerate(o.shape):
            if int(np.prod(o.shape[:k])) == before and size == n:
                out = _A(o, k)
                break
    elif name == "squeeze":
        if x.axis not in p["dimensions"]:
            out = _A(_bind(eqn, vals)[0], x.axis - sum(d < x.axis for d in p["dimensions"]))
    elif name == "expand_dims":
        o = _bind(eqn, vals)[0]
        out = _A(o, x.axis + sum(d <= x.axis for d in p["dimensions"]))
    elif name == "transpose":
        out = _A(_bind(eqn, vals)[0], list(p["permutation"]).index(x.axis))
    elif name in _REDUCE_KEEP:
        red = tuple(p["axes"])
        if x.axis not in red:
            out = _A(_bind(eqn, vals)[0], x.axis - sum(d < x.axis for d in red))
        elif name == "reduce_sum":
            per = jnp.moveaxis(x.val, x.axis, 0)
            rest = tuple(d + 1 if d < x.axis else d for d in red if d != x.axis)
            per = jnp.sum(per, axis=rest) if rest else per
            return _S(jnp.zeros(per.shape[1:], per.dtype), per)
    elif name in _CUMULATIVE:
        if p["axis"] != x.axis:
            out = _A(_bind(eqn, vals)[0], x.axis)
    elif name == "slice":
        stride = (p["strides"] or (1,) * len(p["start_indices"]))[x.axis]
        if p["start_indices"][x.axis] == 0 and p["limit_indices"][x.axis] == n and stride == 1:
            out = _A(_bind(eqn, vals)[0], x.axis)
    elif name == "dynamic_slice":
        if isinstance(x, _A) and all(isinstance(a, _C) for a in ins[1:]) and p["slice_sizes"][x.axis] == n:
            out = _A(_bind(eqn, vals)[0], x.axis)  # a full-length slice starts at 0
    elif name in ("concatenate", "pad"):
        if name == "pad" and isinstance(x, _A) and isinstance(ins[1], _C):
            if tuple(p["padding_config"][x.axis]) == (0, 0, 0):
                out = _A(_bind(eqn, vals)[0], x.axis)
        elif name == "concatenate" and len(axes) == 1 and p["dimension"] != next(iter(axes)):
            out = _A(_bind(eqn, vals)[0], next(iter(axes)))
    elif name == "gather":
        out = _gather(eqn, ins, vals)
    elif name == "dot_general":
        out = _dot(eqn, ins, vals)
    if out is None:
        _refuse(eqn, "an operation that mixes the elements of a per-element array")
    return out


def _gather(eqn, ins, vals):
    """Indexing: per-element indices into an array not depending on the site, or batched
    indexing (``take_along_axis``) whose batch dimension is the plate's."""
    operand, idx = ins
    dn = eqn.params["dimension_numbers"]
    obd, ibd = tuple(dn.operand_batching_dims), tuple(dn.start_indices_batching_dims)
    ivd = jnp.ndim(idx.val) - 1  # the index vector is the last dimension of the indices
    if isinstance(idx, _A):
        if idx.axis == ivd:
            return None
        if isinstance(operand, _A) and (operand.axis not in obd or ibd[obd.index(operand.axis)] != idx.axis):
            return None
        axis = idx.axis
    else:  # per-element operand, indices not depending on the site: the plate must be a batch dim
        if operand.axis not in obd:
            return None
        axis = ibd[obd.index(operand.axis)]
    o = _bind(eqn, vals)[0]
    batch_out = [d for d in range(o.ndim) if d not in dn.offset_dims]
    batch_in = [d for d in range(jnp.ndim(idx.val)) if d != ivd]
    return _A(o, batch_out[batch_in.index(axis)])


def _dot(eqn, ins, vals):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    contracted = _contracted_plate(lhs, rhs, lc, rc)
    if contracted is not None:  # a sum over the plate's dimension: element i's term is slice i's product
        j = contracted
        dn = ((tuple(d for k, d in enumerate(lc) if k != j), tuple(d for k, d in enumerate(rc) if k != j)),
              ((lc[j],) + tuple(lb), (rc[j],) + tuple(rb)))
        params = {k: v for k, v in eqn.params.items() if k in ("precision", "preferred_element_type")}
        per = jax.lax.dot_general(vals[0], vals[1], dn, **params)
        return _S(jnp.zeros(per.shape[1:], per.dtype), per)
    o = _bind(eqn, vals)[0]
    lnd, rnd = jnp.ndim(lhs.val), jnp.ndim(rhs.val)
    lfree = [d for d in range(lnd) if d not in lc and d not in lb]
    rfree = [d for d in range(rnd) if d not in rc and d not in rb]
    if isinstance(lhs, _A) and isinstance(rhs, _A):
        if lhs.axis in lb and tuple(rb)[list(lb).index(lhs.axis)] == rhs.axis:
            return _A(o, list(lb).index(lhs.axis))
        return None
    if isinstance(lhs, _A):
        if lhs.axis in lb or lhs.axis in lc:
            return None
        return _A(o, len(lb) + lfree.index(lhs.axis))
    if rhs.axis in rb or rhs.axis in rc:
        return None
    return _A(o, len(lb) + len(lfree) + rfree.index(rhs.axis))


def _contracted_plate(lhs, rhs, lc, rc):
    """The index in the contracting dimensions of a plate axis contracted against a value not
    depending on the site, or against the other operand's plate axis; else None."""
    for j, (l, r) in enumerate(zip(lc, rc)):
        if isinstance(lhs, _A) and l == lhs.axis and (isinstance(rhs, _C) or rhs.axis == r):
            return j
        if isinstance(rhs, _A) and r == rhs.axis and isinstance(lhs, _C):
            return j
    return None


def plate_axis(site):
    """``(plate, axis)``: the innermost plate of ``site`` and its position in the site's value
    (a batch dimension), or ``(None, reason)`` when the site is in no plate."""
    if not site.plates:
        return None, "not inside a ppl.plate"
    p = site.plates[-1]
    batch = tuple(site.dist().batch_shape)
    return p, len(batch) + p.dim


def split(kont, key, x, axis):
    """Prove that ``kont(key, ., None)`` decomposes per element along ``axis`` of ``x``.

    Returns ``f(xv) -> (base, per, treedef)`` for values ``xv`` shaped like ``x``: ``base`` a
    list of the flattened outputs' parts not depending on the value, ``per`` a list of arrays
    with a leading axis of the plate's length (element ``i``'s term), so that
    ``kont(key, xv, None)`` equals ``base + per.sum(0)`` leaf by leaf and ``per[i]`` depends on
    ``xv`` only through its slice ``i``. Raises :class:`NotSeparable` saying why not.
    """
    n = jnp.shape(x)[axis]
    closed, out_shape = jax.make_jaxpr(lambda xv: kont(key, xv, None), return_shape=True)(x)
    leaves, treedef = jax.tree_util.tree_flatten(out_shape)
    for leaf in leaves:
        if leaf.dtype == jax.dtypes.float0:
            raise NotSeparable("the objective has an integer output")

    def f(xv):
        outs = _run(closed, [_A(xv, axis)], n)
        base, per = [], []
        for leaf, o in zip(leaves, outs):
            if isinstance(o, _A):
                raise NotSeparable("an output of the objective keeps the plate's dimension (return "
                                   "a scalar: sum the per-element terms)")
            if isinstance(o, _C):
                base.append(jnp.asarray(o.val))
                per.append(jnp.zeros((n,) + tuple(leaf.shape), leaf.dtype))
            else:
                base.append(o.base)
                per.append(o.per)
        return base, per

    jax.eval_shape(f, x)  # the proof: it raises NotSeparable at trace time, before any work
    return f, treedef


class PerElement:
    """A continuation proven to be ``c + sum_i h_i(x_i)`` along a plate (see :func:`per_element`)."""

    def __init__(self, f, treedef, plate, axis, n):
        self._f, self._treedef = f, treedef
        self.plate, self.axis, self.n = plate, axis, n

    def terms(self, xv):
        """``(outs, douts, per_outs, per_douts)`` at the value ``xv``: the parts not depending
        on the value (lists of arrays) and each element's terms (leading axis: the element)."""
        base, per = self._f(xv)
        outs, douts = jax.tree_util.tree_unflatten(self._treedef, base)
        pouts, pdouts = jax.tree_util.tree_unflatten(self._treedef, per)
        return list(outs), list(douts), list(pouts), list(pdouts)

    def by_element(self, a):
        """A batch-shaped array (a log density) summed to one number per element: shape ``(n,)``."""
        a = jnp.moveaxis(a, self.axis, 0)
        return a.reshape(self.n, -1).sum(1)


def per_element(site, kont, key, x, who, enabled=True):
    """The per-element decomposition of ``kont`` at ``site`` along its innermost plate, or None.

    ``site`` is the :class:`~ppl.transforms.DualSite`; what was decided (and why not) is noted
    for the plan (``site.note_plate``). None when the site is in no plate, the estimator was
    told ``plates=False``, or the continuation is not provably separable: the caller then uses
    its joint treatment.
    """
    plate, axis = plate_axis(site.site)
    if plate is None:
        return None
    if not enabled:
        site.note_plate(False, f"plate {plate.name!r}: joint treatment ({who}(plates=False))")
        return None
    n = plate.subsample_size
    if jnp.ndim(x) <= axis or jnp.shape(x)[axis] != n:
        site.note_plate(False, f"plate {plate.name!r}: joint treatment: the value's shape {jnp.shape(x)} "
                               f"has no dimension of {n} at the plate's position")
        return None
    try:
        f, treedef = split(kont, key, x, axis)
    except NotSeparable as e:
        site.note_plate(False, f"plate {plate.name!r}: joint treatment: the rest of the objective is not "
                               f"provably a sum of per-element terms ({e})")
        return None
    return PerElement(f, treedef, plate, axis, n)
