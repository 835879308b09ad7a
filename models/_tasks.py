"""Tasks of the main command: a model, its guide, data, a loss, metrics and plots per model.

Each ``vae(args, ds)`` / ``dvae(args, ds)`` / ``air(args, ds)`` returns a :class:`Task`; the
command line (:mod:`ppl.models.cli`) only chooses and runs them.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ppl.distributions import tfp_distributions

from . import _plots
from .data import binarize_static
from .losses import make_loss

# Objectives whose value is a sum over the examples of a batched site (so the whole
# minibatch can be one site); the others are per-example (IWAE, VIMCO) and are vmapped.
BATCHABLE = ("elbo", "elbo-stl")


#: Default particles K of the test log-likelihood, per data set: MNIST's 10,000 test images at
#: K = 1000 would take longer than a default training run on a CPU, so it gets K = 100.
EVAL_PARTICLES = {"digits": 1000, "mnist": 100}


def eval_particles(args, ds) -> int:
    """``--eval-particles``, or the data set's default."""
    return args.eval_particles or EVAL_PARTICLES.get(ds.name, 100)


def _progress_flag(args):
    return False if getattr(args, "no_progress", False) else None


def _ll_metrics(ll, k):
    """One name for the same metric in every model: the estimate and its K."""
    return {"test_log_likelihood": float(jnp.mean(ll)), "test_log_likelihood_particles": int(k)}


@dataclasses.dataclass
class Task:
    data_name: str
    model: Callable
    guide: Callable
    train: object
    init: Callable
    loss: Callable  # E -> loss(key, params, batch) (losses.make_loss)
    plan: Callable  # E -> Plan
    metrics: Callable  # (key, params) -> dict
    plots: Callable  # (out, params, history) -> list of paths
    compiler_options: dict | None = None  # XLA options for the training step (fit's argument)


def _plan_fn(model_args, guide_args, x, per_example):
    def plan(E):
        xb = x[:1] if per_example else x
        return E.plan(model_args(None, xb), guide_args(None, xb))
    return plan


def _image_plots(out, history, module, params, x_test, image_shape):
    """Learning curve, reconstructions of 10 test images and 30 samples (VAE and discrete VAE)."""
    k1, k2 = jax.random.split(jax.random.key(1))
    xs = x_test[:10]
    samples = np.asarray(module.sample_images(k2, params, 30)).reshape(3, 10, -1)
    name = module.__name__.rsplit(".", 1)[-1].upper()
    paths = [_plots.learning_curve(os.path.join(out, "learning_curve.png"), history, title=f"{name}: training loss"),
             _plots.image_grid(os.path.join(out, "reconstructions.png"), [xs, module.reconstruct(k1, params, xs)],
                               image_shape, titles=["test images", "reconstructions"],
                               suptitle=f"{name}: test images, reconstructions (one guide draw, Bernoulli means)"),
             _plots.image_grid(os.path.join(out, "samples.png"), samples, image_shape,
                               suptitle=f"{name}: 30 samples from the model (prior draws, Bernoulli means)")]
    return [p for p in paths if p is not None]


def vae(args, ds):
    from . import vae as V

    cfg = V.VAEConfig(data_dim=ds.num_features, latent_dim=args.latent or 10, hidden=(args.hidden or 200,))
    params0 = V.init_params(jax.random.key(0), cfg)
    per_ex = args.objective not in BATCHABLE
    x_test = jnp.asarray(binarize_static(ds.x_test))
    ma = lambda p, x: (V.model_args(p or params0, x))  # noqa: E731
    ga = lambda p, x: (V.guide_args(p or params0, x))  # noqa: E731

    def metrics(key, params):
        k1, k2 = jax.random.split(key)
        k = eval_particles(args, ds)
        ll = V.log_likelihood(k2, params, x_test, k, progress=_progress_flag(args))
        return {"test_elbo": float(V.elbo(k1, params, x_test)), **_ll_metrics(ll, k)}

    def plots(out, params, history):
        return _image_plots(out, history, V, params, x_test, ds.image_shape)

    return Task(ds.name, V.model, V.guide, jnp.asarray(ds.x_train),
                lambda key: V.init_params(key, cfg, data_mean=ds.x_train.mean(0)),
                lambda E: make_loss(E, per_example=per_ex, binarized=True),
                _plan_fn(ma, ga, x_test[:args.batch_size], per_ex), metrics, plots)


def dvae(args, ds):
    from . import dvae as D

    tfp_distributions("--model dvae")  # its latents are TFP Bernoulli: say so before anything is built
    cfg = D.DVAEConfig(data_dim=ds.num_features, latent_dim=args.latent or 8, hidden=(args.hidden or 64,))
    params0 = D.init_params(jax.random.key(0), cfg)
    x_test = jnp.asarray(binarize_static(ds.x_test))
    ma = lambda p, x: D.model_args(p or params0, x)  # noqa: E731
    ga = lambda p, x: D.guide_args(p or params0, x)  # noqa: E731

    def metrics(key, params):
        k1, k2 = jax.random.split(key)
        k = eval_particles(args, ds)
        ll = D.log_likelihood(k2, params, x_test, k, progress=_progress_flag(args))
        return {"test_elbo": float(D.elbo(k1, params, x_test)), **_ll_metrics(ll, k)}

    def plots(out, params, history):
        return _image_plots(out, history, D, params, x_test, ds.image_shape)

    return Task(ds.name, D.model, D.guide, jnp.asarray(ds.x_train),
                lambda key: D.init_params(key, cfg, data_mean=ds.x_train.mean(0)),
                lambda E: make_loss(E, binarized=True),
                _plan_fn(ma, ga, x_test[:1], True), metrics, plots)


def air(args, ds):
    from . import air as A

    tfp_distributions("--model air")  # its presences are TFP Bernoulli: say so before anything is built
    if ds.image_shape != (8, 8):
        # MNIST digits are downsampled to the glimpse size so canvases stay small.
        imgs = np.asarray(jax.image.resize(jnp.asarray(ds.images(ds.x_train[:5000])), (5000, 8, 8), "linear"))
    else:
        imgs = ds.images(ds.x_train)
    air_model = A.AIR(hidden=args.hidden or 64)
    x_train, c_train = air_model.make_canvases(jax.random.key(11), imgs, 2000)
    x_test, c_test = air_model.make_canvases(jax.random.key(12), imgs if ds.image_shape != (8, 8) else ds.images(ds.x_test), 300)
    params0 = air_model.init_params(jax.random.key(0))
    ma = lambda p, x: A.model_args(p or params0, x)  # noqa: E731
    ga = lambda p, x: A.guide_args(p or params0, x)  # noqa: E731

    def metrics(key, params):
        k1, k2 = jax.random.split(key)
        return {"test_elbo": float(air_model.elbo(k1, params, x_test)),
                "count_accuracy": float(air_model.count_accuracy(k2, params, x_test, c_test))}

    def plots(out, params, history):
        xs = x_test[:8]
        paths = [_plots.learning_curve(os.path.join(out, "learning_curve.png"), history, title="AIR: training loss"),
                 air_model.plot_boxes(os.path.join(out, "boxes.png"), params, xs, c_test[:8])]
        return [p for p in paths if p is not None]

    return Task(f"{ds.name} canvases ({air_model.canvas}x{air_model.canvas}, 0-{air_model.max_steps} digits)",
                air_model.model, air_model.guide, x_train, air_model.init_params, make_loss,
                _plan_fn(ma, ga, x_test[:1], True), metrics, plots, A.compiler_options())
