"""A library of variational objectives, each a short program built from the constructs.

Each function returns an objective program ``f(model_args, guide_args)`` (tuples of the
arguments of ``model`` and ``guide``) to hand to :func:`ppl.transforms.expectation`; its
expected value is the bound, and ADEV turns it into an unbiased gradient estimator with
each random choice's estimator chosen per site. The code is the documentation: write your
own objective the same way.

Which are biased (as *gradient* estimators of the bound they return), and say so in their
plan through :func:`ppl.transforms.mark`: ``iwae_stl`` (sticking the landing is biased for
K > 1, see Tucker et al. 2018); ``rws_wake_p`` / ``rws_wake_q`` are surrogate updates of
reweighted wake-sleep, not gradients of a bound. ``iwae_dreg`` needs every guide choice
reparameterized and refuses (at trace time, naming the site) one that is not. ``elbo_stl``
stays unbiased for any guide: the term it drops, ``E_q[d log q_phi(z) / d phi]``, is zero.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from ._verdict import mark, require_pathwise
from .vi import Marginal, density, model_density, sim

__all__ = ["elbo", "elbo_stl", "iwae", "iwae_dreg", "iwae_stl", "renyi", "vimco",
           "hvi", "iwhvi", "diwhvi", "sivi", "rws_wake_p", "rws_wake_q"]

sg = jax.lax.stop_gradient


def _particles(model, guide, k, model_args, guide_args, guide_args_for_density=None):
    """K guide draws (one vmapped random choice per guide site) and their log weights."""
    def one(_):
        tr = sim(guide, *guide_args)
        logq = tr.score if guide_args_for_density is None else density(guide, tr.choices, *guide_args_for_density)
        return tr.choices, model_density(model, tr.choices, *model_args) - logq

    return jax.vmap(one)(jnp.arange(k))


def elbo(model, guide):
    """``E_q[log p(x, z) - log q(z)]``."""
    def objective(model_args, guide_args):
        tr = sim(guide, *guide_args)
        return model_density(model, tr.choices, *model_args) - tr.score
    return objective


def elbo_stl(model, guide):
    """ELBO with "sticking the landing": ``log q`` at stopped guide parameters (unbiased)."""
    def objective(model_args, guide_args):
        tr = sim(guide, *guide_args)
        return model_density(model, tr.choices, *model_args) - density(guide, tr.choices, *sg(guide_args))
    return objective


def iwae(model, guide, k):
    """``E[log (1/K) sum_k p(x, z_k) / q(z_k)]`` (IWELBO); K = 1 is the ELBO."""
    def objective(model_args, guide_args):
        _, lw = _particles(model, guide, k, model_args, guide_args)
        return logsumexp(lw) - math.log(k)
    return objective


def iwae_stl(model, guide, k):
    """IWAE with ``log q`` at stopped parameters. BIASED for K > 1 (Tucker et al., 2018)."""
    def objective(model_args, guide_args):
        _, lw = _particles(model, guide, k, model_args, guide_args, sg(guide_args))
        value = logsumexp(lw) - math.log(k)
        if k > 1:
            value = mark(value, "biased", f"iwae_stl with K={k}: sticking the landing biases the IWAE "
                         "gradient for K > 1 (Tucker et al. 2018); use iwae_dreg (reparameterized guides) "
                         "or iwae")
        return value
    return objective


def iwae_dreg(model, guide, k):
    """IWAE with doubly-reparameterized guide gradients (Tucker et al., 2018).

    Value: the IWAE bound. Gradient: model parameters as IWAE (``sum w~_k d log p``); guide
    parameters by ``sum_k w~_k^2 d/dz log w_k dz/dphi`` (reparameterized guides only).
    """
    def objective(model_args, guide_args):
        choices, lw_sg_q = _particles(model, guide, k, sg(model_args), guide_args, sg(guide_args))
        choices = require_pathwise(choices, "iwae_dreg", _DREG_FIX)
        lp_model = jax.vmap(lambda c: model_density(model, sg(c), *model_args))(choices)
        bound = logsumexp(lw_sg_q) - math.log(k)
        wt = sg(jax.nn.softmax(lw_sg_q))
        surrogate = jnp.sum(wt**2 * lw_sg_q) + jnp.sum(wt * lp_model)
        return sg(bound) + surrogate - sg(surrogate)
    return objective


_DREG_FIX = ("DReG's guide gradient needs every guide choice reparameterized. For a discrete or "
             "score-function guide use vimco(model, guide, k), or iwae(model, guide, k) with a "
             "score-function estimator (e.g. Baseline(ScoreFunction(), ...) or LeaveOneOut(n)).")


def renyi(model, guide, k, alpha):
    """Rényi (VR) bound ``1/(1-a) log (1/K) sum_k w_k^(1-a)``; a -> 1 is the ELBO, a = 0 IWAE."""
    def objective(model_args, guide_args):
        _, lw = _particles(model, guide, k, model_args, guide_args)
        if alpha == 1.0:
            return jnp.mean(lw)
        return (logsumexp((1.0 - alpha) * lw) - math.log(k)) / (1.0 - alpha)
    return objective


def vimco(model, guide, k):
    """IWAE value with the VIMCO gradient for discrete guides (Mnih & Rezende, 2016).

    The guide is simulated at stopped parameters, so ADEV owes its random choices no score
    term; the objective adds VIMCO's own: ``sum_k (L - L_-k) d log q(z_k)``, where ``L_-k``
    replaces ``log w_k`` by the mean of the others, plus the pathwise ``d L`` through
    ``log q``. Unbiased for the IWAE gradient; K >= 2.
    """
    if k < 2:
        raise ValueError(f"vimco needs k >= 2 particles (leave-one-out), got k={k}")

    def objective(model_args, guide_args):
        choices, _ = _particles(model, guide, k, model_args, sg(guide_args))
        logq = jax.vmap(lambda c: density(guide, c, *guide_args))(choices)
        lw = jax.vmap(lambda c: model_density(model, c, *model_args))(choices) - logq
        bound = logsumexp(lw) - math.log(k)
        others = (jnp.sum(lw) - lw) / (k - 1)
        lw_loo = jnp.where(jnp.eye(k, dtype=bool), others[:, None], lw[None, :])
        signal = sg(bound - (logsumexp(lw_loo, axis=1) - math.log(k)))
        surrogate = jnp.sum(signal * logq)
        return bound + surrogate - sg(surrogate)
    return objective


def hvi(model, guide, keep, reverse):
    """Hierarchical VI: guide with auxiliary choices, ``log q(x)`` replaced by
    ``log q(x, u) - log r(u | x)`` (Ranganath et al., 2016); a lower bound on the ELBO."""
    return iwhvi(model, guide, keep, reverse, 0)


def iwhvi(model, guide, keep, reverse, m):
    """Importance-weighted HVI (Sobolev & Vetrov, 2019): m extra draws of ``r(u | x)``."""
    marginal = Marginal(guide, tuple(keep), reverse, m)

    def objective(model_args, guide_args):
        x, log_q = marginal.sample(*guide_args)
        return model_density(model, x, *model_args) - log_q
    return objective


def diwhvi(model, guide, keep, reverse, n, m):
    """Doubly importance-weighted HVI: an IWAE over n outer particles of the IWHVI guide."""
    marginal = Marginal(guide, tuple(keep), reverse, m)

    def objective(model_args, guide_args):
        def one(_):
            x, log_q = marginal.sample(*guide_args)
            return model_density(model, x, *model_args) - log_q
        lw = jax.vmap(one)(jnp.arange(n))
        return logsumexp(lw) - math.log(n)
    return objective


def sivi(model, guide, keep, mixing_prior, m):
    """Semi-implicit VI (Yin & Zhou, 2018): IWHVI whose reverse model is the mixing prior.

    ``mixing_prior(x, *guide_args)`` must sample the auxiliary choices from their prior
    (it receives and ignores ``x``).
    """
    return iwhvi(model, guide, keep, mixing_prior, m)


def rws_wake_p(model, guide, k):
    """Reweighted wake-sleep, wake-p surrogate: ``sum_k w~_k log p(x, z_k)``, z from a stopped guide."""
    def objective(model_args, guide_args):
        choices, lw = _particles(model, guide, k, model_args, sg(guide_args))
        lp = jax.vmap(lambda c: model_density(model, sg(c), *model_args))(choices)
        return mark(jnp.sum(sg(jax.nn.softmax(lw)) * lp), "surrogate",
                    "rws_wake_p: the reweighted wake-sleep wake-p update (self-normalized, stopped "
                    "weights), not the gradient of its expected value")
    return objective


def rws_wake_q(model, guide, k):
    """Reweighted wake-sleep, wake-q surrogate: ``sum_k w~_k log q(z_k)`` (maximize)."""
    def objective(model_args, guide_args):
        choices, lw = _particles(model, guide, k, sg(model_args), sg(guide_args))
        lq = jax.vmap(lambda c: density(guide, sg(c), *guide_args))(choices)
        return mark(jnp.sum(sg(jax.nn.softmax(lw)) * lq), "surrogate",
                    "rws_wake_q: the reweighted wake-sleep wake-q update (self-normalized, stopped "
                    "weights), not the gradient of its expected value")
    return objective
