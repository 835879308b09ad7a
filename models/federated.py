"""Federated problems: data split over clients with a leading client axis, for the distributed
methods of ``ppl.backends.distributed``.

- :func:`diabetes_clients`: the diabetes regression split over clients (DIFF2 against DP-GD).
- :func:`digits_dirichlet_clients`: digits split over clients by a Dirichlet label split
  (:func:`dirichlet_split`; FedAMD against FedAvg).
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


def diabetes_clients(n_clients=8):
    """scikit-learn's diabetes regression split over ``n_clients`` of equal size (the first
    ``n_clients * floor(442 / n_clients)`` examples, in the data set's order): features and
    target standardized, a constant feature for the intercept. ``{"a": (P, n_p, 11), "y":
    (P, n_p)}``; :func:`squared_loss` is its loss."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X, y = (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()
    m = len(y) // n_clients
    A = np.concatenate([X, np.ones((len(y), 1))], 1)[: n_clients * m]
    return {"a": A.reshape(n_clients, m, -1), "y": y[: n_clients * m].reshape(n_clients, m)}


def squared_loss(key, w, b):
    """``(1/2) mean (a . w - y)^2`` over a batch."""
    return 0.5 * jnp.mean((b["a"] @ w - b["y"]) ** 2)


def dirichlet_split(labels, n_clients, alpha, seed=0):
    """Indices of each client's examples: for every class, its examples (shuffled) are divided
    among the clients in proportions drawn from Dirichlet(alpha, ..., alpha) (small alpha:
    each client sees few classes). Re-drawn (next seed) until every client holds an example."""
    labels = np.asarray(labels)
    for attempt in range(100):
        rng = np.random.default_rng(seed + attempt)
        parts = [[] for _ in range(n_clients)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_clients, alpha))) * len(idx)).astype(int)[:-1]
            for i, chunk in enumerate(np.split(idx, cuts)):
                parts[i].extend(chunk.tolist())
        if all(parts):
            return [np.array(sorted(p)) for p in parts]
    raise ValueError(f"dirichlet_split: some client got no example in 100 draws (alpha={alpha}, {n_clients} clients)")


def digits_dirichlet_clients(n_clients=20, alpha=0.1, test_fraction=0.2, seed=0):
    """scikit-learn's digits (pixels / 16), a held-out test set (``test_fraction``, stratified
    by a fixed permutation), and the training examples split over ``n_clients`` by
    :func:`dirichlet_split`. Returns ``(parts, test)``: a list of ``{"x": (m_i, 64), "y": (m_i,)}``
    and ``{"x", "y"}``."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    parts = dirichlet_split(y[train], n_clients, alpha, seed)
    return ([{"x": X[train][p], "y": y[train][p].astype(np.int32)} for p in parts],
            {"x": X[test], "y": y[test].astype(np.int32)})
