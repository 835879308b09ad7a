"""Autoguides: variational families built from a model by tracing it.

``guide = AutoNormal(model)``; ``params = guide.init(key, *model_args)`` runs the model once
(at initial values from an init strategy) and records each unobserved random choice: its
address, value shape, support, plates. The guide is then an ordinary ppl program
``guide(params)`` sampling exactly those addresses, so it goes wherever a hand-written guide
goes: ``elbo(model, guide)`` and every other objective (guide arguments ``(params,)``),
``E.plan``, per-site estimators (``estimators={"w": ScoreFunction()}`` in the objective, or
``AutoNormal(model, estimators=...)`` at the guide's sites), ``ppl.simulate`` / ``ppl.assess``.

Continuous sites live on the unconstrained space: a site with support ``S`` is
``T(u)`` with ``T = numpyro.distributions.transforms.biject_to(S)`` and ``u`` Normal, so its
guide density is ``q(x) = N(T^-1(x); loc, scale) |det dT^-1(x)/dx|`` (NumPyro's
``TransformedDistribution``, whose ``log_prob`` subtracts the log-det Jacobian).

- :class:`AutoNormal`: mean-field Normal, one ``loc`` and ``scale`` per unconstrained element.
- :class:`AutoDelta`: point masses at ``T(loc)``; the ELBO is then ``log p(T(loc), y)``, so
  fitting it finds the MAP (of the constrained density, no Jacobian).
- :class:`AutoMultivariateNormal`: one joint Normal over all continuous sites (flattened in
  model order), ``u = loc + L eps`` with ``L`` lower triangular.
- :class:`AutoLowRankMultivariateNormal`: the same with covariance ``W W^T + diag(d^2)``.

Discrete sites (Bernoulli, Categorical) in AutoNormal and the multivariate guides get a
mean-field factor of the same family with learnable per-element ``logits`` (initialised
uniform), estimated by the score function unless the objective chooses otherwise (e.g.
``Enum()``); other discrete families raise :class:`AutoGuideError` naming the site.
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
from ppl._plate import plate
from ppl._site import fmt_address, sample

__all__ = ["AutoGuideError", "AutoNormal", "AutoDelta", "AutoMultivariateNormal",
           "AutoLowRankMultivariateNormal", "init_to_median", "init_to_sample", "init_to_feasible",
           "init_to_value"]


class AutoGuideError(ValueError):
    """A model an autoguide cannot guide (named site, reason and fix), or a guide misused."""


# ---------------------------------------------------------------------------------------
# initialization strategies: (key, dist adapter, transform, unconstrained shape) -> value


@dataclasses.dataclass(frozen=True)
class init_to_median:
    """The elementwise median of ``num_samples`` prior draws (NumPyro's default)."""

    num_samples: int = 15

    def __call__(self, key, name, d, transform, ushape):
        draws = jax.vmap(d.sample)(jax.random.split(key, self.num_samples))
        return jnp.median(draws, axis=0).astype(draws.dtype)


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


# ---------------------------------------------------------------------------------------
# the guides


def _inv_softplus(x):
    return x + jnp.log(-jnp.expm1(-x))


def _is_identity(t):
    while isinstance(t, ndt.IndependentTransform):
        t = t.base_transform
    return isinstance(t, ndt.IdentityTransform)


def _in_plates(plates, fn):
    for p in reversed(plates):
        fn = plate(p.name, p.size, dim=p.dim)(fn)
    return fn()


class AutoGuide:
    """Shared machinery: tracing (``init``), site records, per-site estimators, ``median``."""

    who = "AutoGuide"

    def __init__(self, model, *, init_loc_fn=init_to_median(), init_scale=0.1, estimators=None):
        if not callable(model):
            raise TypeError(f"{type(self).__name__}(model): model must be a program, got {model!r}")
        if not (isinstance(init_scale, (int, float)) and init_scale > 0):
            raise ValueError(f"{type(self).__name__}(init_scale={init_scale!r}): must be a positive number")
        self.model = model
        self.init_loc_fn = init_loc_fn
        self.init_scale = float(init_scale)
        self.estimators = dict(estimators or {})
        self._sites = None

    @property
    def sites(self) -> tuple:
        if self._sites is None:
            raise AutoGuideError(
                f"{type(self).__name__}: the guide does not know the model's sites yet. Call "
                "params = guide.init(key, *model_args) first (it traces the model).")
        return self._sites

    def init(self, key, *model_args):
        """Trace ``model(*model_args)`` and return the initial parameters (a dict pytree)."""
        k1, k2 = jax.random.split(key)
        sites = trace_sites(self.model, model_args, k1, self.init_loc_fn, type(self).__name__)
        unknown = set(self.estimators) - {s.name for s in sites}
        if unknown:
            raise AutoGuideError(f"{type(self).__name__}(estimators=...): no latent site "
                                 f"{sorted(unknown)} in the model (it has {[s.name for s in sites]})")
        self._check(sites)
        self._sites = sites
        return self._init_params(k2, sites)

    def _check(self, sites):
        pass

    def _estimator(self, s):
        return self.estimators.get(s.name)

    def _discrete(self, s, params):
        logits = _param(params, "logits", s, type(self).__name__)
        d = nd.Bernoulli(logits=logits) if s.family == "Bernoulli" else nd.Categorical(logits=logits)
        return _in_plates(s.plates, lambda: sample(s.addr, d, estimator=self._estimator(s)))

    def _discrete_params(self, sites):
        out = {}
        for s in sites:
            if s.family == "Bernoulli":
                out[s.name] = jnp.zeros(s.shape)
            elif s.family == "Categorical":
                # the site's value has shape s.shape; its logits one more axis of K categories
                k = _num_categories(s)
                out[s.name] = jnp.zeros(s.shape + (k,))
        return out

    def median(self, params):
        """``{address: T(loc)}``: the guide's median of each continuous site (constrained)."""
        locs = self._locs(params)
        return {s.name: s.transform(locs[s.name]) for s in self.sites if not s.discrete}

    def __repr__(self):
        names = None if self._sites is None else [s.name for s in self._sites]
        return f"{type(self).__name__}({getattr(self.model, '__name__', self.model)!r}, sites={names})"


def _num_categories(s):
    c = s.support
    while isinstance(c, nd.constraints.independent):
        c = c.base_constraint
    return int(np.max(np.asarray(c.upper_bound))) + 1


def _param(params, group, s, who):
    """``params[group][s.name]``, or an error saying what the parameters should look like."""
    try:
        return params[group][s.name]
    except (KeyError, TypeError, IndexError):
        raise AutoGuideError(
            f"{who}: the parameters have no {group}[{s.name!r}]. Pass the pytree that guide.init "
            "returned (or one of the same structure, e.g. fit's result.params).") from None


class AutoNormal(AutoGuide):
    """Mean-field Normal on the unconstrained space (NumPyro's ``AutoNormal``).

    Parameters: ``{"loc": {address: u}, "scale": {address: s}, "logits": {address: l}}`` with
    the scale ``softplus(s)`` (initialised to ``init_scale``); each site's unconstrained value
    has its own ``loc`` and ``scale`` per element (local latents in a plate included). Guide
    sites sit in the model's plates (batch dimensions kept).
    """

    def _init_params(self, key, sites):
        cont = [s for s in sites if not s.discrete]
        p = {"loc": {s.name: s.transform.inv(s.init) for s in cont},
             "scale": {s.name: jnp.full(s.ushape, _inv_softplus(jnp.asarray(self.init_scale))) for s in cont}}
        disc = self._discrete_params(sites)
        if disc:
            p["logits"] = disc
        return p

    def _locs(self, params):
        return params["loc"]

    def __call__(self, params):
        for s in self.sites:
            if s.discrete:
                self._discrete(s, params)
                continue
            loc = _param(params, "loc", s, "AutoNormal")
            scale = jax.nn.softplus(_param(params, "scale", s, "AutoNormal"))
            base = nd.Normal(loc, scale).to_event(len(s.ushape) - s.batch_ndim)
            d = base if _is_identity(s.transform) else nd.TransformedDistribution(base, s.transform)
            _in_plates(s.plates, lambda s=s, d=d: sample(s.addr, d, estimator=self._estimator(s)))


class AutoDelta(AutoGuide):
    """Point masses (NumPyro's ``AutoDelta``): MAP estimation with any objective's ELBO.

    Parameters ``{"loc": {address: u}}``; the site's value is ``T(u)`` with log density 0, so
    ``elbo`` becomes ``log p(T(u), y)`` and its maximizer the MAP of the constrained density.
    Discrete sites are refused (no gradient moves a point mass between integers).
    """

    def _check(self, sites):
        for s in sites:
            if s.discrete:
                raise AutoGuideError(
                    f"AutoDelta: site {s.name!r} is discrete ({s.family}); a point mass on it gets no "
                    "gradient. Use AutoNormal (a learnable categorical factor) or marginalize it.")

    def _init_params(self, key, sites):
        return {"loc": {s.name: s.transform.inv(s.init) for s in sites}}

    def _locs(self, params):
        return params["loc"]

    def __call__(self, params):
        for s in self.sites:
            d = nd.Delta(s.transform(_param(params, "loc", s, "AutoDelta")), event_dim=len(s.shape) - s.batch_ndim)
            _in_plates(s.plates, lambda s=s, d=d: sample(s.addr, d, estimator=self._estimator(s)))


class AutoMultivariateNormal(AutoGuide):
    """A joint Normal over every continuous site's unconstrained value (NumPyro's
    ``AutoMultivariateNormal``): ``u = loc + L eps``, ``L`` lower triangular.

    Parameters ``{"loc": (D,), "scale_tril": (D, D), "logits": ...}``, ``L = tril(raw, -1) +
    diag(softplus(diag(raw)))`` (initialised to ``init_scale * I``). ``D`` is the total
    unconstrained size; the flat vector holds the sites in model order (``guide.layout``).

    The guide program still samples each model address once: site ``s`` is drawn from its
    conditional given the sites before it, ``u_s | u_<s ~ N(loc_s + L_s,<s eps_<s,
    L_ss L_ss^T)`` with ``eps_<s = L_<s^-1 (u_<s - loc_<s)``; the product of these
    conditionals is the joint density, and each draw is reparameterized.
    """

    def _init_params(self, key, sites):
        loc = self._flat_init(sites)
        D = loc.shape[0]
        raw = jnp.diag(jnp.full((D,), _inv_softplus(jnp.asarray(self.init_scale))))
        p = {"loc": loc, "scale_tril": raw}
        disc = self._discrete_params(sites)
        if disc:
            p["logits"] = disc
        return p

    def _flat_init(self, sites):
        cont = [s for s in sites if not s.discrete]
        return jnp.concatenate([jnp.ravel(s.transform.inv(s.init)) for s in cont])

    @property
    def layout(self):
        """``{address: (offset, size, unconstrained shape)}`` of the flat vector."""
        out, o = {}, 0
        for s in self.sites:
            if not s.discrete:
                out[s.name] = (o, s.size, s.ushape)
                o += s.size
        return out

    def _locs(self, params):
        return {n: params["loc"][o:o + k].reshape(sh) for n, (o, k, sh) in self.layout.items()}

    def scale_tril(self, params):
        raw = params["scale_tril"]
        return jnp.tril(raw, -1) + jnp.diag(jax.nn.softplus(jnp.diag(raw)))

    def covariance(self, params):
        """The unconstrained covariance ``L L^T`` (flat, in ``layout`` order)."""
        L = self.scale_tril(params)
        return L @ L.T

    def __call__(self, params):
        D = sum(s.size for s in self.sites if not s.discrete)
        if not isinstance(params, dict) or jnp.shape(params.get("loc")) != (D,):
            raise AutoGuideError(
                f"{type(self).__name__}: the parameters need a flat 'loc' of shape ({D},) (the "
                f"sites {list(self.layout)} flattened); pass the pytree that guide.init returned.")
        L, loc = self.scale_tril(params), params["loc"]
        done = []  # unconstrained values of the sites drawn so far, flat
        for s in self.sites:
            if s.discrete:
                self._discrete(s, params)
                continue
            o = sum(x.shape[0] for x in done)
            k = s.size
            mean = loc[o:o + k]
            if done:
                eps = jax.scipy.linalg.solve_triangular(L[:o, :o], jnp.concatenate(done) - loc[:o], lower=True)
                mean = mean + L[o:o + k, :o] @ eps
            t = s.transform if s.batch_ndim == 0 else ndt.IndependentTransform(s.transform, s.batch_ndim)
            parts = [ndt.ReshapeTransform(s.ushape, (k,))] + ([] if _is_identity(t) else [t])
            d = nd.TransformedDistribution(nd.MultivariateNormal(mean, scale_tril=L[o:o + k, o:o + k]), parts)
            x = sample(s.addr, d, estimator=self._estimator(s))
            u = x if _is_identity(t) else t.inv(x)
            done.append(jnp.ravel(u))


class AutoLowRankMultivariateNormal(AutoMultivariateNormal):
    """:class:`AutoMultivariateNormal` with covariance ``W W^T + diag(d^2)`` (``W``: D x rank).

    Parameters ``{"loc": (D,), "cov_factor": (D, rank), "scale": (D,)}``, ``d =
    softplus(scale)`` (initialised to ``init_scale``; ``W`` to small random entries, since
    ``W = 0`` is a stationary point of the ELBO). Sampled through the Cholesky factor of that
    covariance, so it saves parameters (``D (rank + 2)`` instead of ``D (D + 1)``), not time.
    """

    def __init__(self, model, *, rank=None, **kwargs):
        super().__init__(model, **kwargs)
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            raise ValueError(f"AutoLowRankMultivariateNormal(rank={rank!r}): must be a positive int")
        self.rank = rank

    def _init_params(self, key, sites):
        loc = self._flat_init(sites)
        D = loc.shape[0]
        r = self.rank if self.rank is not None else max(1, int(round(np.sqrt(D))))
        p = {"loc": loc, "cov_factor": 0.1 * self.init_scale / np.sqrt(r) * jax.random.normal(key, (D, r)),
             "scale": jnp.full((D,), _inv_softplus(jnp.asarray(self.init_scale)))}
        disc = self._discrete_params(sites)
        if disc:
            p["logits"] = disc
        return p

    def covariance(self, params):
        W, d = params["cov_factor"], jax.nn.softplus(params["scale"])
        return W @ W.T + jnp.diag(d ** 2)

    def scale_tril(self, params):
        return jnp.linalg.cholesky(self.covariance(params))
