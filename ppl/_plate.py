"""Plates: conditional independence along a batch dimension, and minibatch scaling.

``with plate(name, size, subsample_size=None, dim=None):`` marks the random choices made
inside it as independent along one batch dimension of their values. When the data inside
is a subsample of ``subsample_size`` out of ``size`` elements (a minibatch), the log density
of every random choice inside (sampled or observed) is multiplied by
``size / subsample_size``, so a minibatch's log density is an unbiased estimate of the full
data's. Nested plates multiply their scales.

How it fits the language: ``sample`` records the plates open when it is called as a static
parameter of its site (``Site.plates``), so the staged program carries them through ``jit``,
``vmap``, ``scan``, ``ppl.call`` and every re-emission. Interpreters multiply a site's log
density by ``Site.scale`` wherever it enters a score or a weight (simulate, assess,
generate, replay, harvest, and hence ``sim`` / ``density`` inside ADEV objectives). The
estimators' own uses of a site's log density (score-function terms, enumeration weights)
are the sampling law's and stay unscaled, which is what keeps them unbiased.

The open plates are a trace-time, thread-local tuple of static Python values (names and
sizes, never arrays), set and restored by the ``with`` statement. It is part of ``jax.jit``'s
cache key (a JAX config state), so a jitted function holding sites that is traced inside a
plate is traced again outside it, never served with the other's scale.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools

from . import _compat

__all__ = ["plate", "Plate", "PlateError", "current_plates", "check_site", "record_sites"]

_RECORDERS: list = []  # see record_sites


class PlateError(ValueError):
    """A plate was given bad sizes, or a site inside it does not fit its dimension."""


@dataclasses.dataclass(frozen=True)
class Plate:
    """A plate as sites record it: static, hashable."""

    name: str
    size: int
    subsample_size: int
    dim: int  # a negative position in the site's batch shape (NumPyro's convention)

    @property
    def scale(self) -> float:
        return self.size / self.subsample_size

    @property
    def subsampled(self) -> bool:
        return self.subsample_size != self.size


# The open plates (outermost first), thread-local and part of jax.jit's cache key: a jitted
# function holding sites, traced inside a plate, is retraced outside it (not reused).
_OPEN = _compat.jit_keyed_state("ppl_open_plates", (), "ppl.plate contexts open at trace time")


def current_plates() -> tuple:
    return _OPEN.value


def _as_int(value, what, name):
    try:
        ok = not isinstance(value, bool) and hasattr(value, "__index__") and int(value.__index__()) == value
    except Exception:  # a traced array: its value is not known when the program is staged
        ok = False
    if not ok:
        raise PlateError(
            f"plate({name!r}, ...): {what} must be a Python int (a static size known when the "
            f"program is staged), got {value!r}. Pass the full data size as a Python int, e.g. "
            "closed over or as a static argument, not as a traced array.")
    value = int(value.__index__())
    if value < 1:
        raise PlateError(f"plate({name!r}, ...): {what} must be >= 1, got {value}")
    return value


class plate:
    """``with ppl.plate(name, size, subsample_size=None, dim=None):``

    Random choices inside are conditionally independent along dimension ``dim`` of their
    batch shape (default: the rightmost one not taken by an enclosing plate, NumPyro's
    convention: the outermost plate is ``-1``, the next ``-2``, ...). That dimension must
    have ``subsample_size`` elements (or ``size`` without subsampling): a ``jax.vmap`` over
    the data inside the plate, or a batched distribution (``.expand``), gives it.

    With ``subsample_size`` (the data inside is a minibatch of ``subsample_size`` out of
    ``size`` elements), each enclosed log density is multiplied by ``size / subsample_size``.
    Minibatches from ``ppl.transforms.fit.fit(..., data=..., batch_size=B)``::

        def model(x, y):                       # x, y: the minibatch fit passes
            w = ppl.sample("w", nd.Normal(0., 1.).expand((3,)).to_event(1))
            with ppl.plate("data", N, subsample_size=B):   # N: the full data size, a Python int
                ppl.sample("y", nd.Normal(x @ w, 0.5), obs=y)

    ``plate(...)(fn)`` is the function form: ``fn`` run inside the plate.
    """

    def __init__(self, name, size, subsample_size=None, dim=None):
        if not isinstance(name, str) or not name:
            raise PlateError(f"plate: the name must be a non-empty str, got {name!r}")
        self.name = name
        self.size = _as_int(size, "size", name)
        self.subsample_size = self.size if subsample_size is None else _as_int(subsample_size, "subsample_size", name)
        if self.subsample_size > self.size:
            raise PlateError(
                f"plate({name!r}, {self.size}, subsample_size={self.subsample_size}): the subsample "
                "cannot be larger than the full size. Pass the full data size as size.")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim >= 0):
            raise PlateError(f"plate({name!r}, ...): dim must be a negative int (a position counted "
                             f"from the right of the batch shape), got {dim!r}")
        self.dim = dim
        self._entered = None

    def __enter__(self):
        if self._entered is not None:
            raise PlateError(f"plate {self.name!r} is already open: nested plates need distinct names")
        stack = _OPEN.value
        for p in stack:
            if p.name == self.name:
                raise PlateError(f"plate {self.name!r} is already open: nested plates need distinct names")
        taken = {p.dim for p in stack}
        dim = self.dim
        if dim is None:
            dim = -1
            while dim in taken:
                dim -= 1
        elif dim in taken:
            other = next(p.name for p in stack if p.dim == dim)
            raise PlateError(f"plate({self.name!r}, ..., dim={dim}): dim {dim} is taken by the enclosing "
                             f"plate {other!r}; nested plates need distinct dims")
        self._entered = Plate(self.name, self.size, self.subsample_size, dim)
        self._cm = _OPEN(stack + (self._entered,))
        self._cm.__enter__()
        return self

    def __exit__(self, *exc):
        cm, self._cm, self._entered = self._cm, None, None
        cm.__exit__(*exc)
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def inside(*args, **kwargs):
            with plate(self.name, self.size, self.subsample_size if self.subsample_size != self.size else None,
                       self.dim):
                return fn(*args, **kwargs)

        return inside

    def __repr__(self):
        sub = f", subsample_size={self.subsample_size}" if self.subsample_size != self.size else ""
        return f"plate({self.name!r}, {self.size}{sub})"


def check_site(site) -> float:
    """The scale of ``site``'s log density; raises ``PlateError`` when it does not fit its plates."""
    if not site.plates:
        _note(site, 1.0)
        return 1.0
    batch_shape = tuple(site.dist().batch_shape)
    scale = 1.0
    for p in site.plates:
        expected = p.subsample_size
        have = batch_shape[p.dim] if len(batch_shape) >= -p.dim else None
        if have != expected:
            what = (f"subsample_size={p.subsample_size}" if p.subsampled else f"size={p.size}")
            got = (f"its batch shape {batch_shape} has {have} there" if have is not None
                   else f"its batch shape {batch_shape} has no dim {p.dim}")
            raise PlateError(
                f"random choice {site.name!r} inside plate {p.name!r} ({what}, dim {p.dim}): {got}. "
                f"The plate's dimension of every value inside it must have {expected} elements: "
                + ("pass the minibatch (of subsample_size elements) to the program, or fix "
                   "subsample_size to the minibatch size; " if p.subsampled else "")
                + "give the value that batch dimension (jax.vmap over the data, or "
                "distribution.expand(...)), move a choice that is not per element out of the "
                "plate, or set the plate's dim=.")
        scale *= p.scale
    _note(site, scale)
    return scale


# ---------------------------------------------------------------------------------------
# recording which sites were scaled (used by fit to warn about unscaled minibatches)


@contextlib.contextmanager
def record_sites():
    """Collect ``(address, observed, value_shape, scale)`` for every site an interpreter
    scores while the context is open (at trace time)."""
    seen: list = []
    _RECORDERS.append(seen)
    try:
        yield seen
    finally:
        _RECORDERS.remove(seen)


def _note(site, scale):
    for seen in _RECORDERS:
        seen.append((site.addr, site.obs is not None, site.value_shape, scale))
