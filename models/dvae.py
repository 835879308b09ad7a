"""Discrete-latent VAE: a layer of Bernoulli latents (the VIMCO / ARM / DisARM benchmark model).

Model: ``z_j ~ Bernoulli(sigmoid(a_j))`` (learned prior logits ``a``), ``x ~ Bernoulli(logits =
decoder(z))``. Guide: ``z_j ~ Bernoulli(logits = encoder(x)_j)``. The latents are TFP
Bernoulli with ``dtype=float32`` so that every estimator applies: ScoreFunction (with
``Baseline`` / ``LeaveOneOut``), ``Enum`` (latent size <= 12), ``MVD``, ``ARM``, ``DisARM``, and
the BIASED relaxations ``GumbelSoftmax`` / ``StraightThrough``; and the ``vimco`` objective.
The site ``"z"`` has value shape ``(B, L)`` with *batch* (not event) dimensions, as MVD and
Enum need; train per example (``B = 1`` under ``jax.vmap``:
``ppl.models.losses.make_loss(E, binarized=True)``) so that
Enum's joint support is ``2^L`` and MVD's cost ``1 + 2L`` continuation calls per example.
Default ``L = 8`` (digits); the benchmarks use ``L = 200`` on MNIST (Enum impossible there).

:func:`gradient_variance` draws N independent gradient estimates at the same parameters and
returns the per-parameter variance summed over all parameters (and per group).

The latents are TFP distributions: the programs need the ``tfp`` extra (``pip install
'ppl[tfp]'``) and raise :class:`~ppl.distributions.MissingExtraError` naming it without; importing
this module does not need it.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from jax.scipy.special import logsumexp

import ppl

from ppl.distributions import tfp_distributions
from ppl.estimators import ARM, MVD, DisARM, Enum, GumbelSoftmax, LeaveOneOut, StraightThrough

from . import _progress
from ._weights import log_weight
from .losses import guide_args, model_args
from .nets import mlp_apply, mlp_init

__all__ = ["DVAEConfig", "init_params", "model", "guide", "model_args", "guide_args",
           "elbo", "log_likelihood", "reconstruct", "sample_images", "gradient_variance",
           "estimator_suite"]


@dataclasses.dataclass(frozen=True)
class DVAEConfig:
    data_dim: int
    latent_dim: int = 8
    hidden: tuple = (64,)

    def __post_init__(self):
        if self.data_dim < 1 or self.latent_dim < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(f"DVAEConfig: sizes must be positive, got {self}")


def init_params(key, cfg: DVAEConfig, *, data_mean=None) -> dict:
    k_dec, k_enc = jax.random.split(key)
    dec = mlp_init(k_dec, [cfg.latent_dim, *reversed(cfg.hidden), cfg.data_dim])
    if data_mean is not None:
        m = jnp.clip(jnp.asarray(data_mean, jnp.float32), 1e-3, 1 - 1e-3)
        dec[-1] = {"w": dec[-1]["w"], "b": jnp.log(m) - jnp.log1p(-m)}
    enc = mlp_init(k_enc, [cfg.data_dim, *cfg.hidden, cfg.latent_dim], final_scale=0.1)
    return {"theta": {"dec": dec, "prior": jnp.zeros((cfg.latent_dim,))}, "phi": enc}


def model(theta, x):
    """``p(z) p(x | z)`` for a minibatch ``x`` (B, D) of 0/1 images."""
    tfd = tfp_distributions("the discrete VAE (ppl.models.dvae)")
    logits_z = jnp.broadcast_to(theta["prior"], (x.shape[0],) + theta["prior"].shape)
    z = ppl.sample("z", tfd.Bernoulli(logits=logits_z, dtype=jnp.float32))
    logits = mlp_apply(theta["dec"], 2.0 * z - 1.0)
    ppl.sample("x", nd.Bernoulli(logits=logits).to_event(1), obs=x.astype(jnp.int32))
    return logits


def guide(phi, x):
    """``q(z | x)``: independent Bernoulli latents with logits from the encoder."""
    tfd = tfp_distributions("the discrete VAE (ppl.models.dvae)")
    return ppl.sample("z", tfd.Bernoulli(logits=mlp_apply(phi, 2.0 * x - 1.0), dtype=jnp.float32))


def _log_weight(key, params, x):
    """``log p(x, z) - log q(z | x)`` for one draw ``z ~ q``; ``x`` (B, D) -> (B,)."""
    return log_weight(model, guide, key, params, x)


@jax.jit
def elbo(key, params, x):
    """One-sample ELBO averaged over the examples of ``x`` (nats per example)."""
    return jnp.mean(_log_weight(key, params, x))


@jax.jit(static_argnames=("num_particles",))
def _iwae_block(key, params, x, num_particles):
    lw = jax.vmap(lambda k: _log_weight(k, params, x))(jax.random.split(key, num_particles))
    return logsumexp(lw, axis=0) - math.log(num_particles)


def log_likelihood(key, params, x, num_particles: int = 100, *, batch_size: int = 1000, progress=False):
    """Per-example IWAE bound with ``num_particles`` guide draws (a lower bound on log p(x)).

    ``batch_size`` examples at a time (memory about ``batch_size * num_particles * D`` floats);
    ``progress``: a bar "log-likelihood, K = ..., N images" (None: on a terminal only).
    """
    if num_particles < 1:
        raise ValueError(f"log_likelihood: num_particles must be >= 1, got {num_particles}")
    x = jnp.asarray(x)
    n = x.shape[0]
    if n <= batch_size:
        with _progress.bar(n, _progress.describe("log-likelihood", num_particles, n), progress) as advance:
            out = _iwae_block(key, params, x, num_particles).block_until_ready()
            advance(n)
        return out
    return _progress.in_blocks(lambda k, xb: _iwae_block(k, params, xb, num_particles), key, x, batch_size,
                               _progress.describe("log-likelihood", num_particles, n), progress)


@jax.jit
def reconstruct(key, params, x):
    z = ppl.simulate(guide)(key, params["phi"], x).retval
    return jax.nn.sigmoid(mlp_apply(params["theta"]["dec"], 2.0 * z - 1.0))


def sample_images(key, params, n: int):
    z = jax.random.bernoulli(key, jax.nn.sigmoid(params["theta"]["prior"]), (n,) + params["theta"]["prior"].shape)
    return jax.nn.sigmoid(mlp_apply(params["theta"]["dec"], 2.0 * z.astype(jnp.float32) - 1.0))


def estimator_suite(latent_dim: int, *, enum_max: int = 12) -> dict:
    """``{label: (objective_name, estimators_or_None)}``: every strategy for ``"z"``.

    Labels of biased estimators end in ``(biased)``. Enum is included when ``latent_dim <=
    enum_max``.
    """
    from ppl.transforms import ScoreFunction

    suite = {"score": ("elbo", {"z": ScoreFunction()})}
    if latent_dim <= enum_max:
        suite["enum"] = ("elbo", {"z": Enum()})
    suite.update({
        "score+baseline(LOO)": ("elbo", {"z": LeaveOneOut(num_samples=4)}),
        "arm": ("elbo", {"z": ARM()}),
        "disarm": ("elbo", {"z": DisARM()}),
        "mvd": ("elbo", {"z": MVD()}),
        "gumbel-softmax (biased)": ("elbo", {"z": GumbelSoftmax(temperature=0.5)}),
        "straight-through (biased)": ("elbo", {"z": StraightThrough(temperature=1.0)}),
        "vimco (K=4)": ("vimco", None),
    })
    return suite


def gradient_variance(loss, params, batch, key, num_estimates: int = 100) -> dict:
    """Variance of ``jax.grad(loss)(key_i, params, batch)`` over ``num_estimates`` keys.

    Returns ``{"total": sum over parameters of the per-parameter variance, "theta": ...,
    "phi": ..., "mean_loss": ...}`` (float). The same ``params`` and ``batch`` for every key,
    so estimators are compared at the same point.
    """
    keys = jax.random.split(key, num_estimates)
    vals, grads = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=1), in_axes=(0, None, None)))(keys, params, batch)

    def tot(tree):
        return float(sum(jnp.sum(jnp.var(g, axis=0, ddof=1)) for g in jax.tree_util.tree_leaves(tree)))

    out = {"total": tot(grads), "mean_loss": float(jnp.mean(vals))}
    if isinstance(grads, dict):
        out.update({k: tot(v) for k, v in grads.items()})
    return out
