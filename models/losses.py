"""One training loss for every model: ``make_loss(E, ...) -> loss(key, params, batch)``.

``E`` is the :class:`~ppl.transforms.Expectation` of the objective (which objective, which
estimator at each site, ``strict``: the caller's choice, planned with ``E.plan`` before training);
``loss`` is what :func:`ppl.transforms.fit.fit` minimizes: minus the objective's estimate per
example, averaged over the batch. The VAE, the discrete VAE and AIR all train with it, as do
the main command, the examples and the benchmarks.

Parameters follow one convention: ``{"theta": model parameters, "phi": guide parameters}``,
the model called as ``model(theta, x)`` and the guide as ``guide(phi, x)`` (:func:`model_args`,
:func:`guide_args`; pass your own for other layouts). A ``"baseline"`` entry (from
:func:`init_baseline`) adds a learned per-example baseline ``b(x)``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ppl.estimators import Baseline

from .data import binarize
from .nets import mlp_apply, mlp_init

__all__ = ["make_loss", "model_args", "guide_args", "init_baseline"]


def model_args(params, x):
    """The model's arguments ``(params["theta"], x)``."""
    return (params["theta"], x)


def guide_args(params, x):
    """The guide's arguments ``(params["phi"], x)``."""
    return (params["phi"], x)


def init_baseline(key, data_dim: int, hidden: int) -> list:
    """A learned baseline ``b(x)``: an MLP example -> hidden -> 1 starting at 0, for ``params["baseline"]``."""
    return mlp_init(key, [data_dim, hidden, 1], final_scale=0.0)


def make_loss(E, *, per_example: bool = True, binarized: bool = False, model_args=model_args,
              guide_args=guide_args):
    """``loss(key, params, batch)`` for ``fit``: minus ``E``'s objective per example, averaged.

    ``per_example=True`` vmaps ``E.estimate`` over the batch, one example (``B = 1``) at a
    time: needed by objectives that are not sums over examples (IWAE, VIMCO) and by
    estimators whose cost grows with the site's size (Enum, MVD). ``per_example=False`` makes
    the whole minibatch one call (the VAE's ELBO: one site of shape ``(B, L)``), divided by
    ``B``. ``binarized``: the batch is binarized dynamically (:func:`~ppl.models.data.binarize`)
    with a key of its own. The key is split into the binarization's and the estimate's either way.

    Learned baseline: if ``params`` has a ``"baseline"`` entry (:func:`init_baseline`), each
    :class:`~ppl.estimators.Baseline` that ``E``'s ``estimators`` choose gets the value ``b(x)``
    for its example (a function of the data only, so the estimate stays unbiased; ADEV holds it
    constant), and ``b`` is trained towards the objective by the squared error
    ``(objective - b(x))^2 / 2``, whose gradient is added but whose value is not: the loss
    reported is minus the objective either way. Needs ``per_example=True``.
    """
    def one(key, params, xi):
        xi = xi[None]
        if "baseline" not in params:
            return E.estimate(key, model_args(params, xi), guide_args(params, xi)), 0.0
        b = mlp_apply(params["baseline"], xi)[0, 0]
        with_b = E.map_estimators(
            lambda e: dataclasses.replace(e, value=jax.lax.stop_gradient(b)) if isinstance(e, Baseline) else e)
        v = with_b.estimate(key, model_args(params, xi), guide_args(params, xi))
        return v, 0.5 * (jax.lax.stop_gradient(v) - b) ** 2

    def loss(key, params, batch):
        k_bin, k_est = jax.random.split(key)
        x = binarize(k_bin, batch) if binarized else batch
        if not per_example:
            if "baseline" in params:
                raise ValueError("make_loss: a learned baseline (params['baseline']) is per example; "
                                 "pass per_example=True")
            return -E.estimate(k_est, model_args(params, x), guide_args(params, x)) / x.shape[0]
        v, sq = jax.vmap(one, (0, None, 0))(jax.random.split(k_est, x.shape[0]), params, x)
        sq = jnp.mean(sq)
        return -jnp.mean(v) + (sq - jax.lax.stop_gradient(sq))

    return loss

