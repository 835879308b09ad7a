"""One small adapter protocol over NumPyro and TFP-on-JAX distributions.

Every site holds its distribution as pytree leaves plus a treedef (both NumPyro and TFP
distributions are pytrees), so the distribution's parameters are ordinary operands of the
site that transformations can see, batch and differentiate. Interpreters and estimators
never call a library directly; they go through :class:`Dist`:

- ``sample(key)``: a draw, with no gradient to the parameters;
- ``rsample(key)``: a reparameterized draw (gradients flow to the parameters), when
  ``has_rsample`` (implicit reparameterization included: Gamma, Beta, Dirichlet);
- ``log_prob(value)``: the log density, with the batch shape;
- ``enumerate()``: every value of a finite support (joint over batch elements), or an error;
- ``family`` / ``canonical()``: the family name and its canonical parameters, for
  estimators that need them (measure-valued derivatives, ARM).
"""
from __future__ import annotations

import copy
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from numpyro.distributions.util import validate_sample

try:  # TFP is optional: the adapter works without it.
    from tensorflow_probability.substrates import jax as _tfp

    _tfd = _tfp.distributions
    _tfp_error = None
except Exception as e:  # exercised by tests/models/test_without_tfp.py (TFP blocked in a subprocess)
    _tfd, _tfp_error = None, e

__all__ = ["Dist", "as_dist", "is_distribution", "EnumerationError", "MissingExtraError", "tfp_distributions"]


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names what needs it and the extra to install."""


def tfp_distributions(needed_by: str):
    """TFP-on-JAX's ``distributions`` module, for code that builds TFP distributions itself.

    TFP is an optional extra (``pip install 'ppl[tfp]'``); without it this raises
    :class:`MissingExtraError` naming ``needed_by`` and the extra.
    """
    if _tfd is None:
        raise MissingExtraError(
            f"{needed_by} needs TensorFlow Probability on JAX, an optional extra of ppl that is not "
            f"importable here ({type(_tfp_error).__name__}: {_tfp_error}); install it with "
            "pip install 'ppl[tfp]' (tfp-nightly==0.26.0.dev20261027)")
    return _tfd

#: Largest joint support that enumeration will expand by default.
MAX_ENUMERATION = 4096


class EnumerationError(ValueError):
    """The support of a site cannot be enumerated (infinite, traced, or too large)."""


def is_distribution(d) -> bool:
    if isinstance(d, nd.Distribution):
        return True
    return _tfd is not None and isinstance(d, _tfd.Distribution)


def as_dist(d) -> "Dist":
    """Wrap a NumPyro or TFP distribution in the adapter."""
    if isinstance(d, Dist):
        return d
    if isinstance(d, nd.Distribution):
        return NumPyroDist(d)
    if _tfd is not None and isinstance(d, _tfd.Distribution):
        return TFPDist(d)
    raise TypeError(f"expected a NumPyro or TFP distribution, got {type(d).__name__}")


# Families with canonical parameters, by class name of either library.
_FAMILY = {
    "Normal": "Normal",
    "BernoulliLogits": "Bernoulli", "BernoulliProbs": "Bernoulli", "Bernoulli": "Bernoulli",
    "CategoricalLogits": "Categorical", "CategoricalProbs": "Categorical", "Categorical": "Categorical",
    "Poisson": "Poisson",
    "GeometricLogits": "Geometric", "GeometricProbs": "Geometric", "Geometric": "Geometric",
    "Exponential": "Exponential",
    "Gamma": "Gamma", "Beta": "Beta", "Dirichlet": "Dirichlet",
}


class Dist:
    """Adapter interface. Subclasses wrap one library's distribution object."""

    base = None

    @property
    def name(self) -> str:
        return type(self.base).__name__

    @property
    def family(self) -> str | None:
        return _FAMILY.get(self.name)

    # --- the protocol -------------------------------------------------------------
    def sample(self, key):
        return jax.lax.stop_gradient(self._draw(key))

    def rsample(self, key):
        if not self.has_rsample:
            raise ValueError(f"{self.name} has no reparameterized sampler")
        return self._draw(key)

    def log_prob(self, value):
        raise NotImplementedError

    def sampling_log_prob(self, value):
        """Log density of the law values are drawn from. NumPyro's ``.mask(...)`` drops density
        terms but not draws, so its masks are removed here (TFP's ``Masked`` draws masked
        elements from a fixed safe sample instead, so its zero density is the right one).
        Estimators' score terms use it; the trace's score uses :meth:`log_prob`."""
        return self.log_prob(value)

    @property
    def has_rsample(self) -> bool:
        raise NotImplementedError

    def support_values(self):
        """Per-element support values, shape ``(K, *element_shape, *element_event)``, or None
        if not finite. For most distributions the elements are the batch elements; wrappers
        that reinterpret batch dimensions as event dimensions (``.to_event``) keep them as
        elements, so enumeration ranges over their joint support."""
        raise NotImplementedError

    @property
    def element_shape(self) -> tuple:
        """Shape of the independent elements that enumeration ranges over jointly."""
        return self.batch_shape

    def support_size(self):
        """``(K, n)``: values per element and number of elements (the joint support has K^n)."""
        vals = self.support_values()
        if vals is None:
            return None
        return vals.shape[0], math.prod(self.element_shape)

    def canonical(self) -> dict:
        """Canonical parameters of the family (e.g. probs for Bernoulli), differentiable."""
        raise NotImplementedError

    @property
    def event_shape(self):
        return tuple(self.base.event_shape)

    @property
    def batch_shape(self):
        return tuple(self.base.batch_shape)

    def enumerate(self, max_size: int = MAX_ENUMERATION):
        """All values of the joint support: an array of shape (N, *value_shape)."""
        vals = self.support_values()
        if vals is None:
            raise EnumerationError(f"{self.name} has no finite support to enumerate")
        k = vals.shape[0]
        full = self.batch_shape + self.event_shape
        elem = self.element_shape
        n_elem = math.prod(elem)
        if n_elem <= 1:
            return vals.reshape((k,) + full)
        size = k ** n_elem
        if size > max_size:
            raise EnumerationError(
                f"{self.name} with {n_elem} elements (shape {elem}) has a joint support of "
                f"{k}^{n_elem} = {size} values, more than the limit {max_size}")
        flat = vals.reshape((k, n_elem) + vals.shape[1 + len(elem):])
        idx = np.array(list(itertools.product(range(k), repeat=n_elem)), dtype=np.int32)  # (size, n)
        out = flat[idx, np.arange(n_elem)[None, :]]
        return out.reshape((size,) + full)


def _restore_validation(d, flag: bool):
    """Give ``d`` and the distributions inside it NumPyro's validation flag where it is unset.

    A NumPyro distribution that passed through a site as a pytree comes back with
    ``validate_args=None`` (NumPyro's unflatten does not keep it), which would silently turn
    off sample validation in ``log_prob`` (log density -inf outside the support, a warning for
    concrete values). Flags set explicitly (True or False) are kept.
    """
    if getattr(d, "_validate_args", False) is None:
        d._validate_args = flag
    for v in vars(d).values():
        if isinstance(v, nd.Distribution):
            _restore_validation(v, flag)


@jax.custom_jvp
def _sigmoid(l):
    """``sigmoid(l)`` from ``exp(-|l|)`` (shared with :func:`_softplus` after XLA's CSE); its
    derivative ``s (1 - s)`` is right at every order, also at 0."""
    e = jnp.exp(-jnp.abs(l))
    return jnp.where(l >= 0, 1.0, e) / (1.0 + e)


@_sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
    (l,), (dl,) = primals, tangents
    s = _sigmoid(l)
    return s, s * (1 - s) * dl


@jax.custom_jvp
def _softplus(l):
    """``log(1 + e^l)``, computed as NumPyro does (``max(l, 0) + log1p(exp(-|l|))``, stable) but
    with the derivative ``sigmoid(l)`` everywhere: JAX differentiates ``max`` and ``abs`` at
    their kink as 0, which is NumPyro's wrong gradient at ``l = 0``."""
    return jnp.maximum(l, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(l)))


@_softplus.defjvp
def _softplus_jvp(primals, tangents):
    (l,), (dl,) = primals, tangents
    return _softplus(l), _sigmoid(l) * dl


def _log_sigmoid_terms(logits, k, n):
    """``k log sigmoid(l) + (n - k) log sigmoid(-l) = k l - n softplus(l)``.

    At infinite logits the limit: 0 where every trial has the certain outcome (``k = n`` at
    ``+inf``, ``k = 0`` at ``-inf``), else ``-inf``; NaN logits stay NaN. As fast as NumPyro's
    own density (one ``exp`` and one ``log1p`` per element, value and gradient).
    """
    finite = jnp.isfinite(logits)
    l = jnp.where(finite, logits, 0.0)
    lp = k * l - n * _softplus(l)
    limit = jnp.where(jnp.where(logits > 0, k == n, k == 0), 0.0, -jnp.inf)
    return jnp.where(finite, lp, jnp.where(jnp.isnan(logits), logits, limit))


def _float(x):
    return jnp.asarray(x, jnp.result_type(x, float))


class _BernoulliLogits(nd.BernoulliLogits):
    """NumPyro's ``BernoulliLogits`` with a log density whose gradient is right at ``logits = 0``.

    NumPyro 0.22 writes it with ``max(l, 0)`` and ``log1p(exp(-|l|))``, whose derivatives at
    exactly 0 JAX takes as 0: the gradient comes out ``x`` instead of ``x - 1/2``. Same value
    and cost, with :func:`_softplus`'s derivative.
    """

    @validate_sample
    def log_prob(self, value):
        logits = _float(self.logits)
        return _log_sigmoid_terms(logits, jnp.asarray(value, logits.dtype), 1.0)


class _BinomialLogits(nd.BinomialLogits):
    """NumPyro's ``BinomialLogits`` with the same correction (its normalizer uses
    ``clip(l, 0)`` and ``exp(-|l|)``: the gradient at 0 comes out ``k`` instead of ``k - n/2``)."""

    @validate_sample
    def log_prob(self, value):
        logits = _float(self.logits)
        n, k = jnp.asarray(self.total_count, logits.dtype), jnp.asarray(value, logits.dtype)
        log_binom = jax.scipy.special.gammaln(n + 1) - jax.scipy.special.gammaln(k + 1) \
            - jax.scipy.special.gammaln(n - k + 1)
        return log_binom + _log_sigmoid_terms(logits, k, n)


#: NumPyro classes whose ``log_prob`` has a wrong derivative, and the corrected subclass.
_CORRECTED = {nd.BernoulliLogits: _BernoulliLogits, nd.BinomialLogits: _BinomialLogits}


def _rewrap(d, child):
    """``d`` with ``child`` applied to every distribution among its attributes (alone or in a
    list/tuple), as a shallow copy; ``d`` itself when no child changed. Wrappers keep their
    children there (``Independent`` from ``.to_event``, ``ExpandedDistribution`` from
    ``.expand``, ``MaskedDistribution`` from ``.mask``, ``TransformedDistribution``, mixtures,
    zero-inflated and hurdle distributions, ...), so this walks every NumPyro wrapper."""
    def fix(obj):
        if isinstance(obj, nd.Distribution):
            return child(obj)
        if isinstance(obj, (list, tuple)) and any(isinstance(o, nd.Distribution) for o in obj):
            return type(obj)(fix(o) for o in obj)
        return obj

    changed = {name: new for name, v in vars(d).items() if (new := fix(v)) is not v}
    if not changed:
        return d
    out = copy.copy(d)
    vars(out).update(changed)
    return out


def _corrected(d):
    """``d`` with every defective distribution inside it replaced by its corrected subclass.

    One mechanism for bare distributions and every NumPyro wrapper: :func:`_rewrap` unwraps
    each one, corrects what it finds and rewraps shallow copies. ``d`` itself is never
    modified; ``d`` is returned when nothing needs correcting.
    """
    out = _rewrap(d, _corrected)
    cls = _CORRECTED.get(type(d))
    if cls is None:
        return out
    if out is d:
        out = copy.copy(d)
    out.__class__ = cls
    return out


def _unmasked(d):
    """``d`` without its ``MaskedDistribution`` wrappers, wherever they sit (shallow copies of
    the wrappers around them, by :func:`_rewrap`); ``d`` when it has none."""
    if isinstance(d, nd.MaskedDistribution):
        base = _unmasked(d.base_dist)
        return base if tuple(base.batch_shape) == tuple(d.batch_shape) else base.expand(d.batch_shape)
    return _rewrap(d, _unmasked)


class NumPyroDist(Dist):
    def __init__(self, d):
        from numpyro.distributions import distribution as _npd

        _restore_validation(d, bool(getattr(_npd, "_VALIDATION_ENABLED", False)))
        self.base = d
        # densities come from a copy with NumPyro's wrong-derivative classes corrected
        self._density = _corrected(d)
        self._sampling = _unmasked(self._density)

    def _draw(self, key):
        return self.base.sample(key)

    def rsample(self, key):
        if not self.has_rsample:
            raise ValueError(f"{self.name} has no reparameterized sampler")
        return self.base.rsample(key)

    @property
    def has_rsample(self):
        return bool(self.base.has_rsample)

    def log_prob(self, value):
        return self._density.log_prob(value)

    def sampling_log_prob(self, value):
        return self._sampling.log_prob(value)

    def support_values(self):
        vals, _ = _numpyro_support(self.base)
        return vals

    @property
    def element_shape(self):
        vals, elem_event_ndim = _numpyro_support(self.base)
        full = self.batch_shape + self.event_shape
        return full[:len(full) - elem_event_ndim] if vals is not None else self.batch_shape

    def canonical(self):
        d, fam = self.base, self.family
        if fam == "Normal":
            return {"loc": d.loc, "scale": d.scale}
        if fam in ("Bernoulli", "Categorical", "Geometric"):
            return {"probs": d.probs}
        if fam in ("Poisson", "Exponential"):
            return {"rate": d.rate}
        if fam == "Gamma":
            return {"concentration": d.concentration, "rate": d.rate}
        raise ValueError(f"no canonical parameters for {self.name}")


def _numpyro_support(d):
    """``(values, element_event_ndim)``: support values of shape ``(K, *batch, *event)`` and
    how many trailing dimensions belong to one element; ``(None, 0)`` for an infinite support.

    NumPyro's ``Independent`` (``.to_event``) claims an enumerable support but its
    ``enumerate_support`` raises an empty ``NotImplementedError``, and ``ExpandedDistribution``
    fails the same way around it; both are unwrapped here, the reinterpreted dimensions staying
    independent elements of the joint support.
    """
    if isinstance(d, nd.Independent):
        return _numpyro_support(d.base_dist)
    if isinstance(d, nd.ExpandedDistribution):
        vals, ee = _numpyro_support(d.base_dist)
        if vals is None:
            return None, 0
        target = (vals.shape[0],) + tuple(d.batch_shape) + tuple(d.event_shape)
        vals = vals.reshape((vals.shape[0],) + (1,) * (len(target) - vals.ndim) + vals.shape[1:])
        return jnp.broadcast_to(vals, target), ee
    if isinstance(d, nd.MaskedDistribution):
        if d._mask is True:
            return _numpyro_support(d.base_dist)
        raise EnumerationError(
            f"{type(d.base_dist).__name__} is masked (.mask(...)): the masked elements' densities "
            "are dropped, so enumeration weights would not sum to one. Enumerate the unmasked "
            "distribution and apply the mask to what the program computes from its value")
    if not d.has_enumerate_support:
        return None, 0
    try:
        return d.enumerate_support(expand=True), len(d.event_shape)
    except jax.errors.ConcretizationTypeError as e:
        raise EnumerationError(
            f"{type(d).__name__}'s support size depends on traced parameters; enumeration needs it "
            "known at trace time (pass the bounds as Python numbers)") from e


class TFPDist(Dist):
    def __init__(self, d):
        self.base = d

    def _draw(self, key):
        return self.base.sample(seed=key)

    @property
    def has_rsample(self):
        return self.base.reparameterization_type == _tfd.FULLY_REPARAMETERIZED

    def log_prob(self, value):
        return self.base.log_prob(value)

    def support_values(self):
        d = self.base
        while isinstance(d, _tfd.Independent):  # .to_event: the event dims stay elements
            d = d.distribution
        batch = tuple(d.batch_shape)
        if isinstance(d, _tfd.Bernoulli):
            vals = jnp.arange(2, dtype=d.dtype)
        elif isinstance(d, _tfd.Categorical):
            p = d.logits if d.logits is not None else d.probs
            vals = jnp.arange(p.shape[-1], dtype=d.dtype)
        else:
            return None
        return jnp.broadcast_to(vals.reshape((-1,) + (1,) * len(batch)), (vals.shape[0],) + batch)

    @property
    def element_shape(self):
        d = self.base
        while isinstance(d, _tfd.Independent):
            d = d.distribution
        return tuple(d.batch_shape)

    def canonical(self):
        d, fam = self.base, self.family
        if fam == "Normal":
            return {"loc": jnp.broadcast_to(d.loc, self.batch_shape),
                    "scale": jnp.broadcast_to(d.scale, self.batch_shape)}
        if fam in ("Bernoulli", "Categorical", "Geometric"):
            return {"probs": d.probs_parameter()}
        if fam in ("Poisson", "Exponential"):
            return {"rate": d.rate_parameter() if hasattr(d, "rate_parameter") else d.rate}
        if fam == "Gamma":
            return {"concentration": d.concentration, "rate": d.rate}
        raise ValueError(f"no canonical parameters for {self.name}")


class BatchedDist(Dist):
    """A site vectorized by ``jax.vmap``: independent copies along leading axes.

    ``build(leaves)`` rebuilds the per-element distribution; ``batch`` is the stack of
    ``(in_axes, size)`` pairs recorded by the site's batching rule, innermost first.
    """

    def __init__(self, build, leaves, batch):
        self._build, self._leaves, self._batch = build, list(leaves), tuple(batch)
        self.inner = build(self._leaves_unbatched())

    def _leaves_unbatched(self):
        out = []
        for i, leaf in enumerate(self._leaves):
            n = sum(1 for axes, _ in self._batch if axes[i] is not None)
            out.append(leaf[(0,) * n] if n else leaf)
        return out

    @property
    def base(self):
        return self.inner.base

    @property
    def sizes(self):
        return tuple(size for _, size in reversed(self._batch))

    @property
    def batch_shape(self):
        return self.sizes + self.inner.batch_shape

    @property
    def event_shape(self):
        return self.inner.event_shape

    @property
    def name(self):
        return self.inner.name

    @property
    def has_rsample(self):
        return self.inner.has_rsample

    def _vmapped(self, fn, n_extra=0):
        """vmap ``fn(leaves, *extra)`` over every batch level; extra args are batched at 0."""
        f = fn
        for axes, _ in self._batch:
            f = jax.vmap(f, in_axes=(list(axes),) + (0,) * n_extra)
        return f

    def _keys(self, key):
        ks = jax.random.split(key, math.prod(self.sizes))
        return ks.reshape(self.sizes + ks.shape[1:])

    def _draw(self, key):
        return self._vmapped(lambda leaves, k: self._build(leaves)._draw(k), 1)(self._leaves, self._keys(key))

    def rsample(self, key):
        if not self.has_rsample:
            raise ValueError(f"{self.name} has no reparameterized sampler")
        return self._vmapped(lambda leaves, k: self._build(leaves).rsample(k), 1)(self._leaves, self._keys(key))

    def log_prob(self, value):
        return self._vmapped(lambda leaves, v: self._build(leaves).log_prob(v), 1)(self._leaves, value)

    def sampling_log_prob(self, value):
        return self._vmapped(lambda leaves, v: self._build(leaves).sampling_log_prob(v), 1)(self._leaves, value)

    def support_values(self):
        vals = self.inner.support_values()
        if vals is None:
            return None
        k = vals.shape[0]
        # Support values do not depend on batched parameters for the supported families.
        return jnp.broadcast_to(vals.reshape((k,) + (1,) * len(self.sizes) + vals.shape[1:]),
                                (k,) + self.sizes + vals.shape[1:])

    @property
    def element_shape(self):
        return self.sizes + self.inner.element_shape

    def canonical(self):
        return self._vmapped(lambda leaves: self._build(leaves).canonical())(self._leaves)

    @property
    def family(self):
        return self.inner.family
