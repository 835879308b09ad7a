"""Variational autoencoder (Kingma & Welling 2014) as two ppl programs.

Model: ``z ~ Normal(0, I_L)``, ``x ~ Bernoulli(logits = decoder(z))`` (images in {0, 1}^D).
Guide: ``z ~ Normal(loc, scale)`` with ``(loc, softplus(raw)) = encoder(x)``.
Both take a minibatch ``x`` of shape ``(B, D)``: the site ``"z"`` has value shape ``(B, L)``
(one address for the whole batch, ``to_event(1)``), so one site and one estimator per step.

>>> import jax, jax.numpy as jnp
>>> from ppl.models import vae
>>> cfg = vae.VAEConfig(data_dim=64, latent_dim=4, hidden=(32,))
>>> params = vae.init_params(jax.random.key(0), cfg)
>>> x = jnp.zeros((3, 64))
>>> float(vae.elbo(jax.random.key(1), params, x)) < 0
True

``log_likelihood(key, params, x, num_particles=...)`` estimates ``log p(x)`` per example by
importance sampling with the guide as proposal (the IWAE bound with many particles; a
stochastic lower bound that tightens as ``num_particles`` grows), in chunks that fit memory.
"""
from __future__ import annotations

import dataclasses
import math
import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from jax.scipy.special import logsumexp

import ppl

from . import _progress
from ._weights import log_weight
from .losses import guide_args, model_args
from .nets import mlp_apply, mlp_init

__all__ = ["VAEConfig", "init_params", "model", "guide", "model_args", "guide_args", "elbo",
           "log_likelihood", "reconstruct", "sample_images", "PLDI_TABLE1"]


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Sizes of the VAE. Encoder ``D -> hidden -> 2L``; decoder ``L -> reversed(hidden) -> D``; tanh."""

    data_dim: int
    latent_dim: int = 10
    hidden: tuple = (200,)

    def __post_init__(self):
        if self.data_dim < 1 or self.latent_dim < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(f"VAEConfig: sizes must be positive, got data_dim={self.data_dim}, "
                             f"latent_dim={self.latent_dim}, hidden={self.hidden}")


#: The architecture of the PLDI 2024 paper's Table 1 (MNIST): encoder 784-200-20, decoder 10-200-784.
PLDI_TABLE1 = VAEConfig(data_dim=784, latent_dim=10, hidden=(200,))


def init_params(key, cfg: VAEConfig, *, data_mean=None) -> dict:
    """``{"theta": decoder, "phi": encoder}``; ``data_mean`` (D,) sets the decoder's output bias
    to the data's logit mean, a standard trick that speeds up the first steps."""
    k_dec, k_enc = jax.random.split(key)
    dec = mlp_init(k_dec, [cfg.latent_dim, *reversed(cfg.hidden), cfg.data_dim])
    enc = mlp_init(k_enc, [cfg.data_dim, *cfg.hidden, 2 * cfg.latent_dim], final_scale=0.1)
    if data_mean is not None:
        m = jnp.clip(jnp.asarray(data_mean, jnp.float32), 1e-3, 1 - 1e-3)
        dec[-1] = {"w": dec[-1]["w"], "b": jnp.log(m) - jnp.log1p(-m)}
    return {"theta": dec, "phi": enc}


def decode(theta, z, activation=jnp.tanh):
    """Bernoulli logits of the images for latents ``z`` (..., L)."""
    return mlp_apply(theta, z, activation)


def encode(phi, x, activation=jnp.tanh):
    """``(loc, scale)`` of the guide for images ``x`` (..., D)."""
    out = mlp_apply(phi, x, activation)
    loc, raw = jnp.split(out, 2, axis=-1)
    return loc, jax.nn.softplus(raw + 0.5413) + 1e-4  # softplus(0.5413) ~ 1: start at unit scale


def model(theta, x, activation=jnp.tanh):
    """``p(z) p(x | z)`` for a minibatch ``x`` (B, D) of binary images (any dtype, values 0/1)."""
    latent = theta[0]["w"].shape[0]
    z = ppl.sample("z", nd.Normal(jnp.zeros((x.shape[0], latent), x.dtype), 1.0).to_event(1))
    logits = decode(theta, z, activation)
    ppl.sample("x", nd.Bernoulli(logits=logits).to_event(1), obs=x.astype(jnp.int32))
    return logits


def guide(phi, x, activation=jnp.tanh):
    """``q(z | x)``: a diagonal Normal from the encoder, reparameterizable."""
    loc, scale = encode(phi, x, activation)
    return ppl.sample("z", nd.Normal(loc, scale).to_event(1))


def _log_weight(key, params, x):
    """``log p(x, z) - log q(z | x)`` for one draw ``z ~ q``; ``x`` (B, D) -> (B,)."""
    return log_weight(model, guide, key, params, x)


@jax.jit
def elbo(key, params, x):
    """A one-sample estimate of the ELBO averaged over the examples of ``x`` (nats per example)."""
    return jnp.mean(_log_weight(key, params, x))


@jax.jit(static_argnames=("num_particles", "chunk"))
def _ll_block(key, params, x, num_particles, chunk):
    n_chunks = num_particles // chunk

    def body(acc, k):
        lw = jax.vmap(lambda kk: _log_weight(kk, params, x))(jax.random.split(k, chunk))  # (chunk, B)
        return jnp.logaddexp(acc, logsumexp(lw, axis=0)), None

    acc0 = jnp.full((x.shape[0],), -jnp.inf, x.dtype)
    acc, _ = jax.lax.scan(body, acc0, jax.random.split(key, n_chunks))
    return acc - math.log(num_particles)


def log_likelihood(key, params, x, num_particles: int = 1000, *, batch_size: int = 100,
                   particle_chunk: int = 100, progress=False):
    """Per-example estimates of ``log p(x)``: ``log (1/K) sum_k p(x, z_k) / q(z_k | x)``.

    Processed ``batch_size`` examples x ``particle_chunk`` particles at a time (memory is
    about ``batch_size * particle_chunk * (D + hidden)`` floats). Returns a numpy-convertible
    JAX array of shape (N,); average it for the usual test log-likelihood in nats.
    ``progress``: a bar "log-likelihood, K = ..., N images" (None: on a terminal only).
    """
    if num_particles < 1:
        raise ValueError(f"log_likelihood: num_particles must be >= 1, got {num_particles}")
    chunk = math.gcd(num_particles, particle_chunk) if num_particles % particle_chunk else particle_chunk
    chunk = min(chunk, num_particles)
    x = jnp.asarray(x)
    n = x.shape[0]
    return _progress.in_blocks(lambda k, xb: _ll_block(k, params, xb, num_particles, chunk), key, x,
                               min(batch_size, n), _progress.describe("log-likelihood", num_particles, n),
                               progress)


@jax.jit
def reconstruct(key, params, x):
    """Bernoulli means of ``x`` decoded from one guide draw."""
    z = ppl.simulate(guide)(key, params["phi"], x).retval
    return jax.nn.sigmoid(decode(params["theta"], z))


def sample_images(key, params, n: int):
    """Bernoulli means of ``n`` images decoded from prior draws."""
    latent = params["theta"][0]["w"].shape[0]
    return jax.nn.sigmoid(decode(params["theta"], jax.random.normal(key, (n, latent))))
