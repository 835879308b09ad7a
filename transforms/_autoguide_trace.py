"""Tracing a model for an autoguide: initialization strategies and per-site records.

:func:`trace_sites` runs the model once at initial values (from an init strategy) and returns
a :class:`SiteInfo` per unobserved random choice: address, value shape, support and its
``biject_to`` transform, plates, and the discrete family where there is one. Used by
:mod:`ppl.transforms.autoguide`, which re-exports the strategies.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from numpyro.distributions import transforms as ndt

from ppl._interp import Handler, run, stage

__all__ = ["AutoGuideError", "SiteInfo", "trace_sites", "init_to_median", "init_to_sample",
           "init_to_feasible", "init_to_value"]


class AutoGuideError(ValueError):
    """A model an autoguide cannot guide (named site, reason and fix), or a guide misused."""


# ---------------------------------------------------------------------------------------
# initialization strategies: (key, dist adapter, transform, unconstrained shape) -> value


@dataclasses.dataclass(frozen=True)
class init_to_median:
    """The elementwise median of ``num_samples`` prior draws, taken on the unconstrained
    space (``T(median(T^-1(draws)))``: inside the support, e.g. on the simplex, and the plain
    median for elementwise monotone transforms such as ``exp``)."""

    num_samples: int = 15

    def __call__(self, key, name, d, transform, ushape):
        draws = jax.vmap(d.sample)(jax.random.split(key, self.num_samples))
        return transform(jnp.median(transform.inv(draws), axis=0))


@dataclasses.dataclass(frozen=True)
class init_to_sample:
    """One prior draw."""

    def __call__(self, key, name, d, transform, ushape):
        return d.sample(key)


@dataclasses.dataclass(frozen=True)
class init_to_feasible:
    """``T(0)``: the point of the support at the origin of the unconstrained space."""

    def __call__(self, key, name, d, transform, ushape):
        return transform(jnp.zeros(ushape))


@dataclasses.dataclass(frozen=True)
class init_to_value:
    """The given constrained values ``{address: value}``; ``fallback`` for the others."""

    values: Any
    fallback: Callable = init_to_median()

    def __call__(self, key, name, d, transform, ushape):
        if name in self.values:
            return jnp.asarray(self.values[name])
        return self.fallback(key, name, d, transform, ushape)


# ---------------------------------------------------------------------------------------
# tracing the model


@dataclasses.dataclass(frozen=True)
class SiteInfo:
    """What an autoguide records about one unobserved random choice of the model."""

    addr: tuple
    name: str
    shape: tuple            # the value's shape (vmap axes, batch and event)
    dtype: Any
    batch_ndim: int         # leading dimensions that are batch (not event) dimensions
    support: Any            # NumPyro constraint
    transform: Any          # biject_to(support), over the whole value (None: discrete)
    ushape: tuple           # the unconstrained shape
    plates: tuple
    family: str | None      # "Bernoulli" / "Categorical" for discrete sites, else None
    init: Any               # the initial (constrained) value

    @property
    def discrete(self):
        return self.family is not None

    @property
    def size(self):
        return int(np.prod(self.ushape, dtype=np.int64))


class _Prototype(Handler):
    """Records every unobserved site and returns its initial value (so later sites see it).

    Random choices inside ``lax.scan`` / ``lax.cond`` are refused by the base handler, naming them."""

    def __init__(self, key, init, shift, who):
        self.key, self.init, self.shift, self.who = key, init, shift, who
        self.sites: list = []

    def sample(self, site):
        site.scale  # noqa: B018 - checks the value against its plates (PlateError)
        if site.obs is not None:
            return site.obs
        self.key, sub = jax.random.split(self.key)
        d = site.dist()
        base = d.base
        name = site.name
        if not isinstance(base, nd.Distribution):
            raise AutoGuideError(
                f"{self.who}: site {name!r} has a {type(base).__name__} (TFP) distribution; "
                "autoguides read supports from NumPyro distributions. Use the NumPyro equivalent "
                "at this site, or write the guide by hand.")
        shape, event_ndim = tuple(site.value_shape), len(d.event_shape)
        batch_ndim = len(shape) - event_ndim
        support = base.support
        family = _discrete_family(site, d, self.who) if support.is_discrete else None
        if site.batch and jax.tree_util.tree_leaves(support):
            _check_batched_support(site, self.who)
        for p in site.plates:
            if p.subsampled:
                raise AutoGuideError(
                    f"{self.who}: site {name!r} is a latent choice inside the subsampled plate "
                    f"{p.name!r} ({p.subsample_size} of {p.size}): an autoguide's per-element "
                    "parameters cannot know which elements a minibatch holds. Guide this site with "
                    "an amortized guide written by hand (parameters computed from the data), or "
                    "fit without subsampling.")
        if family is not None:
            given = self.init.values if isinstance(self.init, init_to_value) else {}
            value = jnp.asarray(given[name], site.dtype) if name in given else d.sample(sub)
            info = SiteInfo(site.addr, name, shape, site.dtype, batch_ndim, support, None, shape,
                            site.plates, family, value)
        else:
            t = ndt.biject_to(support)
            ushape = tuple(t.inverse_shape(shape))
            value = jnp.asarray(self.init(sub, name, d, t, ushape), site.dtype)
            _check_init(name, value, shape, d, self.who)
            info = SiteInfo(site.addr, name, shape, site.dtype, batch_ndim, support, t, ushape,
                            site.plates, None, value)
            if self.shift:
                value = t(t.inv(value) + 0.5)
        self.sites.append(info)
        return value

    def deterministic(self, addr, value, batch):
        return value


def _discrete_family(site, d, who):
    base = d.base
    while isinstance(base, (nd.Independent, nd.ExpandedDistribution)):  # .to_event, .expand
        base = base.base_dist
    for fam, classes in (("Bernoulli", (nd.BernoulliLogits, nd.BernoulliProbs)),
                         ("Categorical", (nd.CategoricalLogits, nd.CategoricalProbs))):
        if isinstance(base, classes) and not site.batch:
            return fam
    raise AutoGuideError(
        f"{who}: site {site.name!r} is discrete ({d.name}); autoguides give a learnable mean-field "
        "factor only to Bernoulli and Categorical sites (not vmapped). Marginalize it in the model, "
        "observe it, or write the guide for it by hand.")


def _check_batched_support(site, who):
    d = site.dist()
    leaves = d._vmapped(lambda ls: jax.tree_util.tree_leaves(d._build(ls).base.support))(d._leaves)
    for leaf in leaves:
        first = np.asarray(leaf).reshape((-1,) + np.shape(leaf)[len(d.sizes):])[0]
        if not np.allclose(np.asarray(leaf), np.broadcast_to(first, np.shape(leaf))):
            raise AutoGuideError(
                f"{who}: site {site.name!r} is vectorized with jax.vmap and its support's bounds "
                "differ between elements; autoguides need them equal. Use a batched distribution "
                "(e.g. nd.Uniform(low, high) with array bounds, or .expand) instead of vmap.")


def _check_init(name, value, shape, d, who):
    v = np.asarray(value)
    if v.shape != tuple(shape):
        raise AutoGuideError(f"{who}: the initial value of {name!r} has shape {v.shape}; the site's "
                             f"values have shape {tuple(shape)}.")
    ok = np.isfinite(v).all() and np.all(np.asarray(d.base.support(jnp.asarray(v))))
    if not ok:
        raise AutoGuideError(
            f"{who}: the initial value of {name!r} ({v!r}) is outside the site's support "
            f"{d.base.support} or not finite. Give a value inside the support (init_to_value), or "
            "use init_to_median() / init_to_feasible().")


def trace_sites(model, args, key, init, who):
    """The model's unobserved sites, recorded at initial values (see :class:`SiteInfo`).

    The model runs twice, the second time with every continuous value moved in the
    unconstrained space: a support that changes with it depends on other random choices, and an
    autoguide (whose transform is fixed) is refused for it.
    """
    closed, flat, _ = stage(model, args)
    h = _Prototype(key, init, False, who)
    run(closed, flat, h)
    h2 = _Prototype(key, init_to_value({s.name: s.init for s in h.sites}), True, who)
    run(closed, flat, h2)
    for a, b in zip(h.sites, h2.sites):
        la, lb = jax.tree_util.tree_leaves(a.support), jax.tree_util.tree_leaves(b.support)
        if any(not np.allclose(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)):
            raise AutoGuideError(
                f"{who}: the support of site {a.name!r} ({a.support}) depends on other random "
                "choices; an autoguide fixes each site's transform when it is built. Reparameterize "
                "(e.g. x = z * u with u ~ Uniform(0, 1) instead of x ~ Uniform(0, z)) or write the "
                "guide by hand.")
    if not h.sites:
        raise AutoGuideError(f"{who}: the model has no unobserved random choice to guide.")
    return tuple(h.sites)
