"""Federated problems: data split over clients with a leading client axis, for the distributed
methods of ``ppl.backends.distributed``.

- :func:`heterogeneous_logistic`: logistic regression with the nonconvex regularizer
  ``lam * sum_j x_j^2 / (1 + x_j^2)`` of the EF21 papers; client ``i``'s features scaled by
  ``10^(spread * i / (n - 1))``, so the clients' smoothness constants ``L_i`` span about
  ``10^(2 spread)``. Returns the data, the ``L_i``, the constant ``L`` of the average loss and a
  start point.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def logistic_loss(lam):
    """``loss(key, x, client_data)`` of :func:`heterogeneous_logistic` (labels in {-1, 1})."""

    def loss(key, x, b):
        z = b["y"] * (b["a"] @ x)
        return jnp.mean(jnp.logaddexp(0, -z)) + lam * jnp.sum(x ** 2 / (1 + x ** 2))

    return loss


def heterogeneous_logistic(n=8, m=30, d=12, spread=1.15, lam=0.1, seed=0):
    """``(data, L_i, L, x0)`` with ``data = {"a": (n, m, d), "y": (n, m)}`` (NumPy float64).
    ``L_i = lambda_max(A_i^T A_i) / (4 m) + 2 lam`` (the logistic part's curvature is at most
    1/4; the regularizer's second derivative at most 2 lam); ``L`` the same for the average."""
    rng = np.random.default_rng(seed)
    s = np.logspace(0, spread, n)
    A = (rng.normal(size=(n, m, d)) + 0.3 * rng.normal(size=(n, 1, d))) * s[:, None, None]
    y = np.sign(rng.normal(size=(n, m)) + 0.5 * A[..., 0] / s[:, None])
    Li = np.array([np.linalg.eigvalsh(A[i].T @ A[i] / m).max() / 4 + 2 * lam for i in range(n)])
    L = np.linalg.eigvalsh(np.einsum("imd,ime->de", A, A) / (m * n)).max() / 4 + 2 * lam
    return {"a": A, "y": y}, Li, L, rng.normal(size=d)
