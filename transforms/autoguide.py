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

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from numpyro.distributions import transforms as ndt

from ppl._plate import plate
from ppl._site import sample

from ._autoguide_trace import (AutoGuideError, init_to_feasible, init_to_median, init_to_sample, init_to_value,
                               trace_sites)

__all__ = ["AutoGuideError", "AutoNormal", "AutoDelta", "AutoMultivariateNormal",
           "AutoLowRankMultivariateNormal", "init_to_median", "init_to_sample", "init_to_feasible",
           "init_to_value"]


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
