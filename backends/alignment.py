"""Hessian-alignment penalties for domain generalization (Hemati et al. 2023, "Understanding
Hessian Alignment for Domain Generalization"), as terms a user adds to an objective.

``risks(head) -> (E,)`` gives each training environment's risk as a function of the classifier
head's parameters ``head`` (a pytree); the features may depend on other parameters through the
closure, and the penalties are differentiable in both (double backpropagation). With
``g_e = grad R_e(head)``, ``H_e`` its Hessian, ``gbar`` and ``Hbar`` those of the mean risk:

- :func:`hgp_penalty`: ``(1/E) sum_e [alpha ||H_e g_e - sg(Hbar gbar)||^2 + beta ||g_e - sg(gbar)||^2]``,
  the Hessian-gradient products computed exactly with forward-over-reverse products
  (``H_e g_e = grad (||g_e||^2 / 2)``, the paper's ``||g_e|| grad ||g_e||``);
- :func:`hutchinson_penalty`: the same with ``H_e g_e`` replaced by Hutchinson's estimate of
  ``diag(H_e)``, ``(1/S) sum_s z_s * H_e z_s`` with Rademacher ``z_s`` (shared across
  environments), so it needs a ``key``;
- :func:`hessian_diagonal`: that estimator on its own (unbiased for ``diag H``).

``sg`` is ``stop_gradient`` (as in the paper's equations; ``stop_gradient_mean=False`` lets
gradients flow through the mean as the authors' Colored-MNIST script does). Use:
``loss = jnp.mean(risks(head)) + hgp_penalty(risks, head, alpha=..., beta=...)``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = ["hgp_penalty", "hutchinson_penalty", "hessian_diagonal"]


def _check(where, alpha, beta):
    for name, v in (("alpha", alpha), ("beta", beta)):
        if isinstance(v, jax.core.Tracer):
            continue
        if not np.isfinite(float(v)) or float(v) < 0:
            raise ValueError(f"{where}: {name}={v!r} must be a finite number >= 0")


def _env_risks(risks, head):
    r = risks(head)
    if r.ndim != 1 or r.shape[0] < 2:
        raise ValueError(f"Hessian alignment: risks(head) must return a vector of per-environment risks "
                         f"(at least 2 environments), got shape {r.shape}")
    return r.shape[0]


def _flat_risks(risks, head):
    x, unravel = ravel_pytree(head)
    return (lambda v: risks(unravel(v))), x


def hgp_penalty(risks: Callable, head, *, alpha=1.0, beta=1.0, stop_gradient_mean: bool = True):
    """The HGP penalty (module docstring): gradient and Hessian-gradient-product alignment."""
    _check("hgp_penalty", alpha, beta)
    E = _env_risks(risks, head)
    R, x = _flat_risks(risks, head)
    G = jax.jacrev(R)(x)                                        # (E, d): g_e
    hg = jax.vmap(lambda e, g: jax.jvp(jax.grad(lambda v: R(v)[e]), (x,), (g,))[1])(jnp.arange(E), G)
    gbar = G.mean(0)
    hbar = jax.jvp(jax.grad(lambda v: R(v).mean()), (x,), (gbar,))[1]
    if stop_gradient_mean:
        gbar, hbar = jax.lax.stop_gradient(gbar), jax.lax.stop_gradient(hbar)
    return jnp.mean(alpha * jnp.sum((hg - hbar) ** 2, -1) + beta * jnp.sum((G - gbar) ** 2, -1))


def hessian_diagonal(f: Callable, params, *, key, num_samples: int = 100):
    """Hutchinson's estimate of ``diag H`` of ``f`` at ``params``: the mean of ``z * (H z)`` over
    Rademacher ``z`` (shaped like ``params``). Exact when ``H`` is diagonal; otherwise the variance
    of coordinate ``i`` per probe is ``sum_{j != i} H_ij^2``."""
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"hessian_diagonal: num_samples={num_samples!r} must be an integer >= 1")
    x, unravel = ravel_pytree(params)
    g = jax.grad(lambda v: f(unravel(v)))
    z = jax.random.rademacher(key, (num_samples,) + x.shape, x.dtype)
    d = jnp.mean(jax.vmap(lambda zi: zi * jax.jvp(g, (x,), (zi,))[1])(z), 0)
    return unravel(d)


def hutchinson_penalty(risks: Callable, head, *, key, num_samples: int = 100, alpha=1.0, beta=1.0,
                       stop_gradient_mean: bool = True):
    """The Hutchinson penalty: ``(1/E) sum_e [alpha ||D_e - sg(mean_e D_e)||^2 + beta ||g_e - sg(gbar)||^2]``
    with ``D_e`` the estimate of ``diag H_e`` from ``num_samples`` Rademacher probes shared by all
    environments (the paper uses 300)."""
    _check("hutchinson_penalty", alpha, beta)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"hutchinson_penalty: num_samples={num_samples!r} must be an integer >= 1")
    E = _env_risks(risks, head)
    R, x = _flat_risks(risks, head)
    G = jax.jacrev(R)(x)
    z = jax.random.rademacher(key, (num_samples,) + x.shape, x.dtype)

    def diag_e(e):
        ge = jax.grad(lambda v: R(v)[e])
        return jnp.mean(jax.vmap(lambda zi: zi * jax.jvp(ge, (x,), (zi,))[1])(z), 0)

    D = jax.vmap(diag_e)(jnp.arange(E))
    gbar, dbar = G.mean(0), D.mean(0)
    if stop_gradient_mean:
        gbar, dbar = jax.lax.stop_gradient(gbar), jax.lax.stop_gradient(dbar)
    return jnp.mean(alpha * jnp.sum((D - dbar) ** 2, -1) + beta * jnp.sum((G - gbar) ** 2, -1))
