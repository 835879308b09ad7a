"""The random-choice primitive and its rules.

``sample(address, distribution)`` binds ``sample_p`` with the distribution's pytree leaves as
operands and its treedef, the address and the value's shape as static parameters. A staged
program (a jaxpr) therefore shows every random choice with its parameters, which is what
lets interpreters walk it and lets ADEV hand each site the rest of the program.

Rules registered here, beside the primitive:
- abstract evaluation (the value's shape and dtype);
- batching: ``jax.vmap`` over a site records the batched operand axes, so a vectorized site
  keeps one address and gains leading axes (independent copies);
- evaluation / lowering / differentiation outside an interpreter raise a clear error.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _compat
from ._effects import check_no_handler
from ._plate import check_site, current_plates
from .distributions import BatchedDist, as_dist, is_distribution

__all__ = ["sample", "deterministic", "validation", "sample_p", "det_p", "Site", "normalize_address", "bind_site"]

sample_p = _compat.Primitive("ppl_sample")
det_p = _compat.Primitive("ppl_deterministic")

_OUTSIDE = (
    "random choice {addr!r} was reached outside an interpreter. Programs take no PRNG key: "
    "run the program through an interpreter, e.g. ppl.simulate(program)(key, *args), "
    "ppl.generate(program)(key, constraints, *args) or ppl.assess(program)(choices, *args); "
    "objectives go through ppl.transforms.expectation(objective).estimate(key, *args).")


def normalize_address(addr) -> tuple:
    """Addresses are tuples of str/int. A str is split at "/" ("enc/z" is ("enc", "z"), the
    form addresses are printed in); an int is a one-element address."""
    if isinstance(addr, str) and addr and all(addr.split("/")):
        return tuple(addr.split("/"))
    if isinstance(addr, int) and not isinstance(addr, bool):
        return (addr,)
    if isinstance(addr, tuple) and addr and all(
            isinstance(a, (str, int)) and not isinstance(a, bool) for a in addr):
        return addr
    raise TypeError(f"an address is a str, an int, or a non-empty tuple of them; got {addr!r}")


def fmt_address(addr: tuple) -> str:
    return "/".join(str(a) for a in addr)


# ---------------------------------------------------------------------------------------
# the user-facing functions


def sample(address, distribution, *, obs=None, estimator=None):
    """A random choice at ``address`` from ``distribution`` (NumPyro or TFP).

    With ``obs`` the choice is observed: its value is ``obs`` and its log density counts in
    the program's score, but nothing is sampled. ``estimator`` chooses how ADEV estimates
    this site's gradient (an object from ``ppl.estimators``; an objective's own mapping
    takes precedence, see ``ppl.transforms.expectation``).

    Returns the value (inside an interpreter).
    """
    addr = normalize_address(address)
    check_no_handler(f"ppl.sample({fmt_address(addr)!r}, ...)")
    if not is_distribution(distribution):
        raise TypeError(
            f"sample({fmt_address(addr)!r}, ...): expected a NumPyro or TFP-on-JAX distribution, "
            f"got {type(distribution).__name__}. Build one, e.g. numpyro.distributions.Normal(loc, "
            "scale) or tfp.substrates.jax.distributions.Normal(loc, scale).")
    if estimator is not None and not hasattr(estimator, "jvp"):
        raise TypeError(
            f"sample({fmt_address(addr)!r}, ..., estimator=...): expected an estimator object "
            f"from ppl.estimators (e.g. ppl.estimators.Reparam()), got {estimator!r}")
    leaves, treedef = jax.tree_util.tree_flatten(distribution)
    leaves = [jnp.asarray(x) for x in leaves]
    if _VALIDATION.value:
        _validate(addr, distribution)
    d = as_dist(distribution)
    out = jax.eval_shape(lambda: d.sample(jax.random.key(0)))
    params = dict(addr=addr, treedef=treedef, shape=tuple(out.shape), dtype=np.dtype(out.dtype),
                  observed=obs is not None, batch=(), estimator=estimator, plates=current_plates())
    if obs is not None:
        obs = _check_value(addr, obs, out.shape, out.dtype, "observed value", keep_traced_float=True)
    return bind_site(leaves, obs, params)


def bind_site(leaves, obs, params):
    """Bind ``sample_p`` on the distribution's leaves (and the observation, if any)."""
    operands = list(leaves) + ([] if obs is None else [obs])
    return sample_p.bind(*operands, **params)


def deterministic(address, value):
    """Record a deterministic ``value`` at ``address`` in the trace; returns ``value``."""
    addr = normalize_address(address)
    check_no_handler(f"ppl.deterministic({fmt_address(addr)!r}, ...)")
    value = jnp.asarray(value)
    return det_p.bind(value, addr=addr, batch=())


# ---------------------------------------------------------------------------------------
# validation

# Whether ``validation`` is open: a thread-local JAX configuration state, part of ``jax.jit``'s
# cache key (a function traced inside the context is retraced outside it, and back).
_VALIDATION = _compat.jit_keyed_state("ppl_validate_parameters", False,
                                      "ppl.validation: check distribution parameters at every site")


@contextlib.contextmanager
def validation(enabled: bool = True):
    """``with ppl.validation():`` checks distribution parameters against their constraints.

    Inside the block, ``sample`` checks every concrete parameter (a constant or closed-over
    array, known while an interpreter stages the program) and raises ``ValueError`` naming the
    address and the parameter; parameters computed from the program's arguments, or under
    ``jit``, are abstract and are not checked (NumPyro's own ``validate_args`` behaves the same
    way). The setting is local to
    the block and the thread; ``validation(False)`` turns it off inside an enclosing block.
    """
    with _VALIDATION(bool(enabled)):
        yield


def _validate(addr, d):
    constraints = getattr(d, "arg_constraints", None)
    if constraints is None:  # TFP validates at construction with validate_args=True
        return
    for name, c in constraints.items():
        v = getattr(d, name, None)
        if v is None or isinstance(v, jax.core.Tracer):
            continue
        try:  # concrete parameters are checked now, also while an interpreter stages the program
            with jax.ensure_compile_time_eval():
                ok = np.all(np.asarray(c(v)))
        except Exception:
            continue
        if not ok:
            raise ValueError(
                f"sample({fmt_address(addr)!r}, {type(d).__name__}(...)): parameter {name!r} = "
                f"{np.asarray(v)!r} violates its constraint {c}. Fix the parameter (e.g. pass a "
                "positive scale through jax.nn.softplus).")


def _check_value(addr, value, shape, dtype, what="value", keep_traced_float=False):
    """Check and convert a value supplied for a site (constraint or observation).

    With ``keep_traced_float`` a traced float value at an integer site is returned uncast, so
    the interpreter that later sees it concrete (``Site.from_eqn_values``) can check it."""
    value = jnp.asarray(value)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"{what} for address {fmt_address(addr)!r} has shape {tuple(value.shape)}, but the "
            f"site's distribution produces values of shape {tuple(shape)}. Give a value of that shape.")
    dtype = np.dtype(dtype)
    vk, sk = np.dtype(value.dtype).kind, dtype.kind
    if sk in "iu" and vk == "f":
        # Floats at an integer site (Bernoulli/Binomial/Categorical...) are accepted when integral,
        # as NumPyro accepts them, and cast to the site's dtype. A concrete value is checked here;
        # a traced one (under jit/vmap) cannot be checked without a runtime check and is the
        # caller's responsibility: a non-integral entry would be truncated by the cast.
        if isinstance(value, jax.core.Tracer):
            if keep_traced_float:
                return value
        else:
            v = np.asarray(value)
            bad = ~np.isfinite(v) | (v != np.round(v)) if v.size else np.zeros((), bool)
            if np.any(bad):
                first = v[bad].ravel()[0] if v.ndim else v
                raise ValueError(
                    f"{what} for address {fmt_address(addr)!r} has non-integral or non-finite "
                    f"entries (e.g. {first!r}, {int(np.sum(bad))} of {v.size}), but the site is "
                    f"discrete with dtype {dtype}. Pass integral values (e.g. binarize images "
                    "with x > 0.5), or use a continuous distribution for this site.")
    if vk not in "biuf" or sk not in "biuf":
        raise TypeError(f"{what} for address {fmt_address(addr)!r} has dtype {value.dtype}; "
                        f"the site's values have dtype {dtype}.")
    return value.astype(dtype) if value.dtype != dtype else value


# ---------------------------------------------------------------------------------------
# rules


def _sample_abstract(*args, addr, treedef, shape, dtype, observed, batch, estimator, plates):
    sizes = tuple(size for _, size in reversed(batch))
    return jax.core.ShapedArray(sizes + tuple(shape), dtype)


def _sample_impl(*args, addr, **_):
    raise RuntimeError(_OUTSIDE.format(addr=fmt_address(addr)))


def _sample_lowering(ctx, *args, addr, **_):
    raise RuntimeError(_OUTSIDE.format(addr=fmt_address(addr)))


def _sample_jvp(primals, tangents, *, addr, **_):
    raise RuntimeError(
        f"jax differentiation reached random choice {fmt_address(addr)!r} directly. Differentiate "
        "an interpreted program instead: e.g. jax.grad of ppl.assess(program) for densities, or "
        "ppl.transforms.expectation(objective) for gradients of expected values.")


def _sample_batch(axis_data, args, dims, **params):
    """vmap of a random choice: independent draws along the mapped axis, one address.

    Registered as a "fancy" batching rule, which JAX calls even when no operand is batched:
    a choice whose distribution does not depend on the mapped axis is still drawn per element.
    """
    size = axis_data.size
    args = [a if d is None else _compat.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    axes = tuple(None if d is None else 0 for d in dims)
    n_leaves = len(args) - params["observed"]
    if params["observed"] and axes[n_leaves] is None:  # an unbatched observation: broadcast it
        obs = args[n_leaves]
        args[n_leaves] = jnp.broadcast_to(obs, (size,) + tuple(jnp.shape(obs)))
    params = dict(params, batch=params["batch"] + ((axes[:n_leaves], size),))
    return sample_p.bind(*args, **params), 0


for _p, _abs in ((sample_p, _sample_abstract),):
    _p.def_abstract_eval(_abs)
    _p.def_impl(_sample_impl)
    _compat.register_lowering(_p, _sample_lowering)
    _compat.primitive_jvps[_p] = _sample_jvp
_compat.fancy_primitive_batchers[sample_p] = _sample_batch


def _det_abstract(x, *, addr, batch):
    return jax.core.ShapedArray(x.shape, x.dtype)


def _det_batch(args, dims, *, addr, batch):
    (x,), (d,) = args, dims
    x = _compat.moveaxis(x, d, 0)
    return det_p.bind(x, addr=addr, batch=batch + (((0,), x.shape[0]),)), 0


det_p.def_abstract_eval(_det_abstract)
det_p.def_impl(lambda x, **_: x)  # a record outside an interpreter is just the value
_compat.register_lowering(det_p, lambda ctx, x, **_: [x])
_compat.primitive_jvps[det_p] = lambda p, t, **kw: (det_p.bind(p[0], **kw), t[0])
_compat.primitive_batchers[det_p] = _det_batch


# ---------------------------------------------------------------------------------------
# what an interpreter sees at a site


@dataclasses.dataclass(frozen=True)
class Site:
    """A random choice as an interpreter sees it: static description plus operand values."""

    addr: tuple
    treedef: Any
    leaves: tuple
    shape: tuple
    dtype: Any
    batch: tuple = ()
    obs: Any = None
    estimator: Any = None
    plates: tuple = ()  # the ppl.plate contexts open at the site (outermost first)
    # a traced float observation cast to an integer site: whether every entry was integral
    # (else the site's log density is NaN, never a density of truncated values); None otherwise
    obs_integral: Any = None

    @classmethod
    def from_eqn_values(cls, params, invals):
        observed = params["observed"]
        n_leaves = len(invals) - observed
        site = cls(addr=params["addr"], treedef=params["treedef"], leaves=tuple(invals[:n_leaves]),
                   shape=params["shape"], dtype=params["dtype"], batch=params["batch"],
                   obs=invals[n_leaves] if observed else None, estimator=params["estimator"],
                   plates=params["plates"])
        if observed and jnp.result_type(site.obs) != jnp.dtype(site.dtype):
            # a float observation at an integer site, traced when the program was staged: check
            # it now if it is concrete and cast it to the site's dtype; a traced one cannot raise,
            # so whether it was integral is kept and a non-integral one makes the density NaN
            ok = None
            if isinstance(site.obs, jax.core.Tracer):
                ok = jnp.all(jnp.isfinite(site.obs) & (site.obs == jnp.round(site.obs)))
            site = dataclasses.replace(site, obs=site.check_value(site.obs, "observed value"), obs_integral=ok)
        return site

    @property
    def value_shape(self):
        return tuple(size for _, size in reversed(self.batch)) + tuple(self.shape)

    @property
    def name(self):
        return fmt_address(self.addr)

    def build(self, leaves):
        """The adapter for this site's distribution at the given leaves."""
        if self.batch:
            return BatchedDist(self._build_one, leaves, self.batch)
        return self._build_one(leaves)

    def _build_one(self, leaves):
        return as_dist(jax.tree_util.tree_unflatten(self.treedef, list(leaves)))

    def dist(self):
        return self.build(self.leaves)

    @property
    def scale(self) -> float:
        """The factor on this site's log density in scores and weights: the product of
        ``size / subsample_size`` over its plates (1.0 outside subsampling plates). Checks
        that the value fits each plate's dimension (``ppl.PlateError`` otherwise)."""
        return check_site(self)

    def check_value(self, value, what="value"):
        return _check_value(self.addr, value, self.value_shape, self.dtype, what)
