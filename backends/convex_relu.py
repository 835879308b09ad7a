"""Convex training of two-layer ReLU networks by ADMM (Bai, Gautam & Sojoudi, "Efficient Global
Optimization of Two-layer ReLU Networks", Algorithm 3.1).

A two-layer ReLU network ``f(x) = sum_j alpha_j relu(x^T w_j)`` trained on the squared loss
with weight decay, ``1/2 ||f(X) - y||^2 + beta/2 sum_j (||w_j||^2 + alpha_j^2)``, has the same
optimal value as a convex program over the activation patterns ``D_i = diag(1[X h_i >= 0])``.
With ``P`` sampled patterns (``sample_gates``) the program is

    min_u  1/2 ||sum_i D_i X (u_i - u'_i) - y||^2 + beta sum_i (||u_i|| + ||u'_i||)
    s.t.   (2 D_i - I) X u_i >= 0,  (2 D_i - I) X u'_i >= 0        (u_i keeps pattern D_i)

written ``min 1/2 ||F u - y||^2 + beta sum ||u_g||  s.t.  G u >= 0``. ADMM splits ``u = v`` (the
group penalty) and ``G u = s`` (``s >= 0``); in scaled form with penalty ``rho`` and dual step
``gamma``:

    u <- (I + F^T F / rho + G^T G)^-1 (F^T y / rho + v - lam + G^T (s - nu))   (cached factors)
    v_g <- max(1 - beta / (rho ||u_g + lam_g||), 0) (u_g + lam_g)             (group soft-threshold)
    s <- max(G u + nu, 0)                                                     (projection)
    lam <- lam + gamma (u - v),   nu <- nu + gamma (G u - s)

Since ``(2 D_i - I)^2 = I``, ``G^T G`` is block-diagonal with ``X^T X`` blocks, and the linear
system is solved by Woodbury with two cached inverses (formed once from Cholesky factors), of
``I + X^T X`` (``d x d``) and of ``rho I + 2 (X (I + X^T X)^-1 X^T) o (sum_i D_i 1 1^T D_i)``
(``n x n``): ``O(P n d + n^2)`` per iteration, never a ``2Pd``-sized matrix. The paper writes
the dual step as ``gamma_a / rho`` on unscaled duals; ``gamma`` here is that ratio.

Neurons are recovered from a solution ``v``: ``w = v_g / sqrt(||v_g||)``, ``alpha = +sqrt(||v_g||)``
for ``u_i`` and ``-sqrt(||v_g||)`` for ``u'_i``; where the constraints hold,
``alpha relu(X w) = D_i X v_g`` and ``beta/2 (||w||^2 + alpha^2) = beta ||v_g||``, so the
network's regularized loss equals the convex objective.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks

__all__ = ["sample_gates", "admm", "ADMMResult", "convex_objective", "constraint_violation",
           "recover_network", "network_loss", "predict"]


def _all_finite(a) -> bool:
    try:
        return bool(np.all(np.isfinite(np.asarray(a))))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return True  # traced (under jit / vmap): the values are not known here


def _finite_matrix(where, X, y=None):
    shape, dtype = jnp.shape(X), jnp.result_type(X)
    if len(shape) != 2 or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{where}: `X` must be a float matrix (n, d), got shape {shape} and "
                         f"dtype {dtype}.")
    if not _all_finite(X):
        raise ValueError(f"{where}: `X` contains NaN or inf.")
    if y is not None:
        if jnp.shape(y) != (shape[0],):
            raise ValueError(f"{where}: `y` must have shape (n,) = ({shape[0]},) to match `X`, "
                             f"got {jnp.shape(y)}.")
        if not _all_finite(y):
            raise ValueError(f"{where}: `y` contains NaN or inf.")


def sample_gates(key: jax.Array, X, num_samples: int) -> jax.Array:
    """``P <= num_samples`` distinct activation patterns ``1[X h >= 0]``, ``h ~ N(0, I)``.

    Returns a boolean ``(P, n)`` array (duplicates and the all-off pattern dropped, order kept).
    Eager: needs a concrete ``X``.
    """
    _finite_matrix("sample_gates", X)
    if not (isinstance(num_samples, (int, np.integer)) and num_samples >= 1):
        raise ValueError(f"sample_gates: `num_samples` must be an integer >= 1, got {num_samples!r}.")
    X = jnp.asarray(X)
    h = jax.random.normal(key, (X.shape[1], int(num_samples)), X.dtype)
    gates = np.asarray(X @ h >= 0).T
    _, first = np.unique(gates, axis=0, return_index=True)
    gates = gates[np.sort(first)]
    return jnp.asarray(gates[gates.any(axis=1)])


def _check_gates(where, gates, n):
    gates = jnp.asarray(gates)
    if gates.ndim != 2 or gates.shape[1] != n or gates.dtype != jnp.bool_:
        raise ValueError(f"{where}: `gates` must be a boolean (P, n) array with n = {n} (from "
                         f"sample_gates), got shape {gates.shape} and dtype {gates.dtype}.")
    return gates


def _F(X, gates, u):  # F u for u of shape (2, P, d)
    return jnp.sum(gates.T * (X @ (u[0] - u[1]).T), axis=1)


def _FT(X, gates, r):  # F^T r, shape (2, P, d)
    a = (gates * r) @ X
    return jnp.stack([a, -a])


def _G(X, gates, u):  # G u, shape (2, P, n)
    return (2 * gates - 1) * (u @ X.T)


def _GT(X, gates, s):
    return ((2 * gates - 1) * s) @ X


def convex_objective(X, y, gates, v, beta) -> jax.Array:
    """``1/2 ||F v - y||^2 + beta sum_g ||v_g||`` for ``v`` of shape ``(2, P, d)``."""
    X, gates = jnp.asarray(X), jnp.asarray(gates)
    return (0.5 * jnp.sum((_F(X, gates, v) - y) ** 2)
            + beta * jnp.sum(jnp.linalg.norm(v, axis=-1)))


def constraint_violation(X, gates, v) -> jax.Array:
    """``max(0, -min(G v))``: how far ``v`` is from keeping its activation patterns."""
    return jnp.maximum(-jnp.min(_G(jnp.asarray(X), jnp.asarray(gates), v)), 0.0)


class ADMMResult(NamedTuple):
    v: jax.Array            # (2, P, d): the group-sparse iterate (the solution)
    u: jax.Array            # (2, P, d): the least-squares iterate; u - v -> 0
    objective: jax.Array    # (num_iters,): convex_objective at v after each iteration
    violation: jax.Array    # (num_iters,): constraint_violation of v after each iteration
    residual: jax.Array     # (num_iters,): primal residual sqrt(||u - v||^2 + ||G u - s||^2)


def admm(X, y, gates, *, beta: float, rho: float = 1.0, gamma: float = 1.0,
         num_iters: int = 1000) -> ADMMResult:
    """Solve the sampled convex program by ADMM (Algorithm 3.1); see the module docstring.

    Args:
      X: ``(n, d)`` inputs (append a column of ones for a bias); y: ``(n,)`` targets.
      gates: ``(P, n)`` boolean activation patterns from :func:`sample_gates`.
      beta: the weight decay (group-lasso weight), > 0.
      rho: the ADMM penalty, > 0; gamma: the dual step, > 0 (ADMM converges for
        ``gamma < (1 + sqrt 5) / 2``).
      num_iters: iterations (one Cholesky factorization, then ``num_iters`` triangular solves).
    """
    where = "convex_relu.admm"
    _finite_matrix(where, X, y)
    _checks.positive(where, beta=beta, rho=rho, gamma=gamma)
    if not (isinstance(num_iters, (int, np.integer)) and num_iters >= 1):
        raise ValueError(f"{where}: `num_iters` must be an integer >= 1, got {num_iters!r}.")
    X, y = jnp.asarray(X), jnp.asarray(y)
    gates = _check_gates(where, gates, X.shape[0])
    return _admm(X, y, gates.astype(X.dtype), float(beta), float(rho), float(gamma),
                 int(num_iters))


@functools.partial(jax.jit, static_argnums=(6,))
def _admm(X, y, gates, beta, rho, gamma, num_iters):
    n, d = X.shape
    # (I + F^T F / rho + G^T G)^-1 by Woodbury: K = I + G^T G = blkdiag(I + X^T X) (2P blocks),
    # F K^-1 F^T = 2 sum_i D_i H D_i = 2 H o (gates^T gates) with H = X (I + X^T X)^-1 X^T, so
    # M^-1 b = K^-1 b - K^-1 F^T S^-1 F K^-1 b with S = rho I_n + F K^-1 F^T: nothing of size
    # 2Pd. Both inverses are formed once from their Cholesky factors: XLA:CPU's triangular solves
    # inside the loop cost far more than the two matrix products that replace them.
    eye_d, eye_n = jnp.eye(d, dtype=X.dtype), jnp.eye(n, dtype=X.dtype)
    A_inv = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(eye_d + X.T @ X), eye_d)
    XAinv = X @ A_inv                                                    # (n, d)
    S = rho * eye_n + 2 * (XAinv @ X.T) * (gates.T @ gates)
    S_inv = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(S), eye_n)

    def solve_M(b):
        Kb = b @ A_inv
        return Kb - _FT(X, gates, S_inv @ _F(X, gates, Kb)) @ A_inv

    Fty = _FT(X, gates, y) / rho

    def body(carry, _):
        u, v, s, lam, nu = carry
        rhs = Fty + v - lam + _GT(X, gates, s - nu)
        u = solve_M(rhs)
        a = u + lam
        norm = jnp.linalg.norm(a, axis=-1, keepdims=True)
        v = jnp.maximum(1 - beta / (rho * jnp.maximum(norm, jnp.finfo(X.dtype).tiny)), 0) * a
        Gu = _G(X, gates, u)
        s = jnp.maximum(Gu + nu, 0)
        lam = lam + gamma * (u - v)
        nu = nu + gamma * (Gu - s)
        res = jnp.sqrt(jnp.sum((u - v) ** 2) + jnp.sum((Gu - s) ** 2))
        out = (convex_objective(X, y, gates, v, beta), constraint_violation(X, gates, v), res)
        return (u, v, s, lam, nu), out

    z = jnp.zeros((2, gates.shape[0], d), X.dtype)
    zs = jnp.zeros((2, gates.shape[0], n), X.dtype)
    (u, v, *_), (obj, viol, res) = jax.lax.scan(body, (z, z, zs, z, zs), None, length=num_iters)
    return ADMMResult(v, u, obj, viol, res)


def recover_network(v) -> tuple[jax.Array, jax.Array]:
    """Neurons from a solution ``v`` (2, P, d): ``W`` (d, 2P) and ``alpha`` (2P,).

    ``w = v_g / sqrt(||v_g||)``, ``alpha = +-sqrt(||v_g||)`` (``+`` for ``u_i``, ``-`` for
    ``u'_i``); groups with ``v_g = 0`` give zero neurons.
    """
    v = jnp.asarray(v)
    if v.ndim != 3 or v.shape[0] != 2:
        raise ValueError(f"recover_network: `v` must have shape (2, P, d), got {v.shape}.")
    norm = jnp.linalg.norm(v, axis=-1)
    root = jnp.sqrt(norm)
    w = jnp.where(norm[..., None] > 0, v / jnp.where(root > 0, root, 1.0)[..., None], 0.0)
    alpha = jnp.stack([root[0], -root[1]])
    return w.reshape(-1, v.shape[-1]).T, alpha.reshape(-1)


def predict(W, alpha, X) -> jax.Array:
    """``f(X) = relu(X W) alpha``."""
    return jax.nn.relu(jnp.asarray(X) @ W) @ alpha


def network_loss(W, alpha, X, y, beta) -> jax.Array:
    """The non-convex training objective ``1/2 ||f(X) - y||^2 + beta/2 (||W||^2 + ||alpha||^2)``."""
    return (0.5 * jnp.sum((predict(W, alpha, X) - y) ** 2)
            + 0.5 * beta * (jnp.sum(W ** 2) + jnp.sum(alpha ** 2)))
