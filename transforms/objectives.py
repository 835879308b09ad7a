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
``particle_axis=`` (the objectives with K particles: ``iwae``, ``iwae_stl``, ``iwae_dreg``,
``renyi``, ``vimco``, ``rws_wake_p``, ``rws_wake_q``, ``f_divergence``) splits the particles
along a mesh axis (:func:`split_particles`); the same key gives the same estimate and gradient
up to the order of float additions.
``f_divergence`` is unbiased for ``-grad D_f(p || q)`` with the ratio from the model's and the
guide's own densities (a normalized model), and marks itself biased with an estimated ratio
(``log_ratio=``, e.g. a discriminator) or self-normalized weights (``normalize=True``).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from . import _sharding
from ._fdiv import (FORWARD_KL, HELLINGER, JEFFREYS, JENSEN_SHANNON, NEYMAN, REVERSE_KL,
                    FDivergence)
from ._verdict import mark, require_pathwise
from .vi import Marginal, density, model_density, sim

__all__ = ["elbo", "elbo_stl", "iwae", "iwae_dreg", "iwae_stl", "renyi", "vimco",
           "hvi", "iwhvi", "diwhvi", "sivi", "rws_wake_p", "rws_wake_q", "f_divergence",
           "FDivergence", "REVERSE_KL", "FORWARD_KL", "JENSEN_SHANNON", "HELLINGER", "JEFFREYS",
           "NEYMAN", "split_particles"]

sg = jax.lax.stop_gradient


def _particles(model, guide, k, model_args, guide_args, guide_args_for_density=None, axis=None, who="iwae"):
    """K guide draws (one vmapped random choice per guide site) and their log weights; with
    ``axis``, the particles split along that mesh axis (:func:`split_particles`)."""
    def one(_):
        tr = sim(guide, *guide_args)
        logq = tr.score if guide_args_for_density is None else density(guide, tr.choices, *guide_args_for_density)
        return tr.choices, model_density(model, tr.choices, *model_args) - logq

    index = split_particles(jnp.arange(k), axis, who)
    return split_particles(jax.vmap(one)(index), axis, who)


def split_particles(tree, axis, who="objective"):
    """Every leaf of ``tree`` (leading axis: the particles) split along mesh axis ``axis``.

    A sharding constraint (``jax.lax.with_sharding_constraint`` with ``P(axis)``) that ADEV
    passes through unchanged: the
    partitioner runs each device's block of particles there and reduces across devices where
    the objective combines them (``logsumexp``, sums). Random draws do not depend on the
    placement (JAX's partitionable Threefry), so the estimate and its gradient equal the
    unsplit ones up to the order of float additions. ``axis=None``: ``tree`` unchanged.

    The axis is looked up in the mesh being traced under: ``fit(mesh=...)`` traces the loss
    under its mesh; elsewhere use ``with jax.set_mesh(mesh):`` around the ``jit``'s call, with
    ``AxisType.Auto`` axes (an ``Explicit`` axis, ``jax.make_mesh``'s default, is refused: the
    interpreters do not carry sharding-in-types). The number of particles must be divisible by
    the axis size.
    """
    if axis is None:
        return tree
    return jax.tree_util.tree_map(lambda a: _sharding.split_along(a, axis, 0, who), tree)


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


def iwae(model, guide, k, *, particle_axis=None):
    """``E[log (1/K) sum_k p(x, z_k) / q(z_k)]`` (IWELBO); K = 1 is the ELBO."""
    def objective(model_args, guide_args):
        _, lw = _particles(model, guide, k, model_args, guide_args, axis=particle_axis)
        return logsumexp(lw) - math.log(k)
    return objective


def iwae_stl(model, guide, k, *, particle_axis=None):
    """IWAE with ``log q`` at stopped parameters. BIASED for K > 1 (Tucker et al., 2018)."""
    def objective(model_args, guide_args):
        _, lw = _particles(model, guide, k, model_args, guide_args, sg(guide_args), particle_axis, "iwae_stl")
        value = logsumexp(lw) - math.log(k)
        if k > 1:
            value = mark(value, "biased", f"iwae_stl with K={k}: sticking the landing biases the IWAE "
                         "gradient for K > 1 (Tucker et al. 2018); use iwae_dreg (reparameterized guides) "
                         "or iwae")
        return value
    return objective


def iwae_dreg(model, guide, k, *, particle_axis=None):
    """IWAE with doubly-reparameterized guide gradients (Tucker et al., 2018).

    Value: the IWAE bound. Gradient: model parameters as IWAE (``sum w~_k d log p``); guide
    parameters by ``sum_k w~_k^2 d/dz log w_k dz/dphi`` (reparameterized guides only).
    """
    def objective(model_args, guide_args):
        choices, lw_sg_q = _particles(model, guide, k, sg(model_args), guide_args, sg(guide_args), particle_axis,
                                      "iwae_dreg")
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


def renyi(model, guide, k, alpha, *, particle_axis=None):
    """Rényi (VR) bound ``1/(1-a) log (1/K) sum_k w_k^(1-a)``; a -> 1 is the ELBO, a = 0 IWAE."""
    def objective(model_args, guide_args):
        _, lw = _particles(model, guide, k, model_args, guide_args, axis=particle_axis, who="renyi")
        if alpha == 1.0:
            return jnp.mean(lw)
        return (logsumexp((1.0 - alpha) * lw) - math.log(k)) / (1.0 - alpha)
    return objective


def vimco(model, guide, k, *, particle_axis=None):
    """IWAE value with the VIMCO gradient for discrete guides (Mnih & Rezende, 2016).

    The guide is simulated at stopped parameters, so ADEV owes its random choices no score
    term; the objective adds VIMCO's own: ``sum_k (L - L_-k) d log q(z_k)``, where ``L_-k``
    replaces ``log w_k`` by the mean of the others, plus the pathwise ``d L`` through
    ``log q``. Unbiased for the IWAE gradient; K >= 2.
    """
    if k < 2:
        raise ValueError(f"vimco needs k >= 2 particles (leave-one-out), got k={k}")

    def objective(model_args, guide_args):
        choices, _ = _particles(model, guide, k, model_args, sg(guide_args), axis=particle_axis, who="vimco")
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


def rws_wake_p(model, guide, k, *, particle_axis=None):
    """Reweighted wake-sleep, wake-p surrogate: ``sum_k w~_k log p(x, z_k)``, z from a stopped guide."""
    def objective(model_args, guide_args):
        choices, lw = _particles(model, guide, k, model_args, sg(guide_args), axis=particle_axis, who="rws_wake_p")
        lp = jax.vmap(lambda c: model_density(model, sg(c), *model_args))(choices)
        return mark(jnp.sum(sg(jax.nn.softmax(lw)) * lp), "surrogate",
                    "rws_wake_p: the reweighted wake-sleep wake-p update (self-normalized, stopped "
                    "weights), not the gradient of its expected value")
    return objective


def rws_wake_q(model, guide, k, *, particle_axis=None):
    """Reweighted wake-sleep, wake-q surrogate: ``sum_k w~_k log q(z_k)`` (maximize)."""
    def objective(model_args, guide_args):
        choices, lw = _particles(model, guide, k, sg(model_args), sg(guide_args), axis=particle_axis,
                                  who="rws_wake_q")
        lq = jax.vmap(lambda c: density(guide, sg(c), *guide_args))(choices)
        return mark(jnp.sum(sg(jax.nn.softmax(lw)) * lq), "surrogate",
                    "rws_wake_q: the reweighted wake-sleep wake-q update (self-normalized, stopped "
                    "weights), not the gradient of its expected value")
    return objective


def f_divergence(model, guide, div, k=1, *, log_ratio=None, normalize=False, particle_axis=None):
    """``-D_f(p || q) = -E_q[f(p(z) / q(z))]`` with the f-distill gradient (Xu et al., 2025).

    ``div`` is an :class:`FDivergence` (``REVERSE_KL``, ``FORWARD_KL``, ``JENSEN_SHANNON``,
    ``HELLINGER``, ``JEFFREYS``, ``NEYMAN`` or your own ``f``); ``p`` is the model's density of
    the guide's choices, ``r = p / q``. Value: the mean over ``k`` guide draws of ``-f(r)``.
    Gradient in the guide's parameters (every guide choice reparameterized, ``z = G_phi(eps)``):
    ``E[h(r) (grad_z log p - grad_z log q)^T dz/dphi]`` with ``h(r) = f''(r) r^2`` and ``r``,
    ``log q`` held at the current parameters; in the model's parameters:
    ``-E_q[r f'(r) d log p / d theta]``. Both are ``-grad D_f`` exactly (the guide part is
    ``d/dphi E_q[g(z)]`` with ``g = f(r) - r f'(r)`` held fixed, whose ``grad_z g`` is
    ``-h(r) (grad_z log p - grad_z log q)``); reverse KL (``h = 1``) is the ELBO with sticking
    the landing when ``p`` is normalized.

    Unbiased when ``p`` is a normalized density of the guide's choices. With an unnormalized
    model (``p(x, z)`` with observations) ``r`` is off by the evidence: reverse KL is unaffected,
    ``normalize=True`` (``h`` divided by its mean over the ``k`` draws, the paper's practice)
    cancels the constant for the power-law weights (forward KL, Hellinger, Neyman) and is
    consistent but BIASED for finite ``k``. ``log_ratio(choices) -> log r`` replaces the density
    ratio in the weight and the value (a discriminator's logit, clamped as you see fit); the
    score difference still comes from the densities. The estimate is then BIASED (the plan says
    so): it is the f-divergence gradient only where the estimated ratio is exact.
    """
    if not isinstance(div, FDivergence):
        raise TypeError(f"f_divergence: div is an FDivergence (e.g. objectives.JENSEN_SHANNON), got {div!r}")
    if int(k) != k or k < 1:
        raise ValueError(f"f_divergence needs k >= 1 guide draws, got k={k}")
    if normalize and k < 2:
        raise ValueError("f_divergence(normalize=True) divides h by its mean over the k draws, so it "
                         "needs k >= 2 (with k=1 every weight is 1: reverse KL)")
    if log_ratio is not None and not callable(log_ratio):
        raise TypeError(f"f_divergence: log_ratio is a callable choices -> log r, got {log_ratio!r}")

    def one(model_args, guide_args):
        tr = sim(guide, *guide_args)
        z = tr.choices
        # the score difference moves with z only; the target's parameters see r f'(r) d log p
        log_pq = model_density(model, z, *sg(model_args)) - density(guide, z, *sg(guide_args))
        log_p_theta = model_density(model, sg(z), *model_args)
        if log_ratio is None:
            u = sg(log_pq)
        else:
            u = sg(jnp.asarray(log_ratio(sg(z)), jnp.result_type(float)))
            if u.shape != ():
                raise ValueError(f"f_divergence: log_ratio(choices) must return one log ratio per guide "
                                 f"draw (a scalar), got shape {u.shape}; sum or index your "
                                 f"discriminator's output")
        return z, u, log_pq, log_p_theta

    def objective(model_args, guide_args):
        index = split_particles(jnp.arange(k), particle_axis, "f_divergence")
        z, u, log_pq, log_p_theta = split_particles(jax.vmap(lambda _: one(model_args, guide_args))(index),
                                                    particle_axis, "f_divergence")
        z = require_pathwise(z, "f_divergence", _FDIV_FIX)
        h = div.weight(u)
        if normalize:
            h = h / jnp.mean(h)
        surrogate = jnp.mean(sg(h) * log_pq - sg(div.r_fprime(u)) * log_p_theta)
        value = sg(jnp.mean(-div.f(u))) + surrogate - sg(surrogate)
        why = []
        if log_ratio is not None:
            why.append("the density ratio r comes from log_ratio (an estimate, e.g. a discriminator)")
        if normalize:
            why.append(f"h(r) is normalized by its mean over k={k} draws (self-normalized)")
        if why:
            value = mark(value, "biased", f"f_divergence({div.name}): " + "; ".join(why)
                         + ": the gradient of D_f only where the ratio is exact / as k grows")
        return value
    return objective


_FDIV_FIX = ("the f-distill gradient moves the guide's draws along dz/dphi (pathwise), so every "
             "guide choice must be reparameterized. For a discrete or score-function guide, "
             "differentiate -f(p/q) itself: write the objective as -div.f(density(model, z) - "
             "tr.score) with ppl.transforms.vi.sim, which ADEV estimates with any site estimator.")
