"""Lanczos with full reorthogonalization, shared by the Hessian spectrum (``diagnostics``) and
DCDM's Ritz vectors (``dcdm``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def lanczos(H, v0, k, *, restart=False):
    """``k`` Lanczos steps with full reorthogonalization from the unit vector ``v0``: the
    tridiagonal's diagonal ``alphas [k]`` and off-diagonal ``betas [k - 1]``, and the basis
    ``V [k, d]`` (Ritz vectors are ``U^T V`` for the eigenvectors ``U`` of the tridiagonal).

    A step whose residual is below ``100 eps ||H||`` (``||H||`` estimated by the largest
    ``||H v_j||`` so far) has found an invariant subspace: the remaining vectors are zero and
    their nodes get zero weight. The test is relative to the operator's scale, so an operator
    with tiny eigenvalues is not truncated early.

    ``restart=True`` instead goes on from the normalized residual, which after the two
    reorthogonalizations is a direction orthogonal to the basis (round-off picks it), with its
    tiny ``beta`` decoupling the tridiagonal's blocks: ``k`` steps then span ``k`` dimensions even
    when the start vector's Krylov space is smaller (repeated eigenvalues, e.g. a Laplacian's),
    so ``k = d`` steps give every eigenpair. For bases (Ritz vectors), not quadrature.
    """
    d = v0.shape[0]
    V = jnp.zeros((k + 1, d), v0.dtype).at[0].set(v0)
    alphas = jnp.zeros((k,), v0.dtype)
    betas = jnp.zeros((k,), v0.dtype)  # betas[j] couples steps j and j + 1
    eps = jnp.finfo(v0.dtype).eps

    def body(j, carry):
        V, alphas, betas, hnorm = carry
        v = V[j]
        w = H(v)
        hnorm = jnp.maximum(hnorm, jnp.linalg.norm(w))
        a = jnp.vdot(v, w)
        mask = (jnp.arange(k + 1) <= j)[:, None]
        Vm = jnp.where(mask, V, 0)
        for _ in range(2):  # twice is enough (Kahan/Parlett)
            w = w - Vm.T @ (Vm @ w)
        b = jnp.linalg.norm(w)
        ok = (b > 0) if restart else (b > 100 * eps * hnorm)
        V = V.at[j + 1].set(jnp.where(ok, w / jnp.where(ok, b, 1), 0))
        return V, alphas.at[j].set(a), betas.at[j].set(jnp.where(ok, b, 0)), hnorm

    V, alphas, betas, _ = jax.lax.fori_loop(0, k, body, (V, alphas, betas, jnp.zeros((), v0.dtype)))
    return alphas, betas[:-1], V[:k]
