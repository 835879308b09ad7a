"""M-FAC (Frantar, Kurtic, Alistarh, NeurIPS 2021): matrix-free inverse empirical-Fisher products.

The preconditioner is the damped empirical Fisher of a sliding window of the last ``m``
gradients ``g_1 .. g_m`` (rows of ``G``, shape ``(m, d)``, all parameters flattened)::

    F = damping * I + (1/m) * G^T G

and the step is ``u = F^{-1} g_t`` after ``g_t`` has replaced the oldest row. Woodbury's
identity turns the ``d x d`` inverse into an ``m x m`` solve::

    F^{-1} x = (1/damping) * (x - G^T (m * damping * I + G G^T)^{-1} G x)

and since ``g_t`` is row ``i`` of ``G`` (so ``G g_t = G G^T e_i``) this is, exactly,
``F^{-1} g_t = m * G^T (m * damping * I + G G^T)^{-1} e_i``: the form computed here. The reference
evaluates the first form, whose difference ``x - G^T (...)`` cancels almost completely before
the ``1/damping`` factor; in float32 with the default damping that loses every digit at
``d = 1e5`` (bench/bench_mfac.py prints the error of both against float64).

The state keeps ``G`` as a ring buffer and the Gram matrix ``G G^T`` up to date: replacing
row ``i`` costs one product ``G g_t`` (O(dm)), the new row and column ``i`` of the Gram matrix;
the step is a second product ``G^T c`` (O(dm)). The ``m x m`` system is factorized (LU with
partial pivoting, ``jnp.linalg.solve``) at every step, as the reference refactorizes its LU at
every step; with the two ``d x m`` products this is O(dm + m^3) per step. (XLA:CPU's Cholesky
measured 20x slower than its LU at m = 256 on this machine, so LU it is.) Rows not yet filled are zero and drop out of ``F``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from . import _checks


class ScaleByMFACState(NamedTuple):
    grads: jax.Array  # (m, d): the gradient window G (ring buffer; unfilled rows are zero)
    gram: jax.Array   # (m, m): G G^T, kept up to date row by row
    index: jax.Array  # int32: the row the next gradient replaces


def _wide(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def scale_by_mfac(num_grads: int = 1024, damping: float = 1e-5) -> optax.GradientTransformationExtraArgs:
    """The M-FAC preconditioner ``g -> F^{-1} g`` (see the module docstring).

    All parameters are flattened into one vector (``d`` entries); the window costs ``m * d``
    numbers of the parameters' dtype (at least float32). Chain with a learning rate; use
    :func:`mfac` for the reference optimizer.
    """
    _checks.positive_int("scale_by_mfac", "num_grads", num_grads)
    _checks.in_range("scale_by_mfac", "damping", damping, 0.0, float("inf"), lo_open=True)
    m = num_grads

    def init_fn(params):
        flat, _ = ravel_pytree(params)
        dtype = _wide(flat.dtype)
        return ScaleByMFACState(jnp.zeros((m, flat.size), dtype), jnp.zeros((m, m), dtype),
                                jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        g, unravel = ravel_pytree(updates)
        if g.size != state.grads.shape[1]:
            raise ValueError(f"scale_by_mfac: the gradient has {g.size} entries but the state was "
                             f"initialised for {state.grads.shape[1]}; call init with these parameters")
        dtype = state.grads.dtype
        g = g.astype(dtype)
        i = state.index
        grads = jax.lax.dynamic_update_slice_in_dim(state.grads, g[None], i, axis=0)
        dots = grads @ g  # G g_t: row/column i of the Gram matrix and the G x of the step
        gram = jax.lax.dynamic_update_slice_in_dim(state.gram, dots[None], i, axis=0)
        gram = jax.lax.dynamic_update_slice_in_dim(gram, dots[:, None], i, axis=1)
        lam = jnp.asarray(damping, dtype)
        system = gram + (m * lam) * jnp.eye(m, dtype=dtype)
        # g is row i of G, so Woodbury's (g - G^T (m lam I + G G^T)^-1 G g) / lam equals
        # m G^T (m lam I + G G^T)^-1 e_i: the same vector without the cancellation of g - G^T c
        # (which 1/lam would amplify; with lam = 1e-5 in float32 it loses every digit).
        e_i = jax.nn.one_hot(i, m, dtype=dtype)
        coef = m * jnp.linalg.solve(system, e_i)
        u = coef @ grads
        new = ScaleByMFACState(grads, gram, (i + 1) % m)
        return unravel(u.astype(jnp.result_type(*jax.tree_util.tree_leaves(updates)))), new

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def mfac(learning_rate=1e-3, num_grads: int = 1024, damping: float = 1e-5, momentum: float = 0.0,
         weight_decay: float = 0.0) -> optax.GradientTransformationExtraArgs:
    """The M-FAC optimizer of the reference: L2 ``weight_decay`` added to the gradient, the
    preconditioned step ``u = F^{-1} g``, optional momentum ``v <- momentum * v + (1 - momentum) * u``,
    then ``params <- params - learning_rate * v``. Reference defaults: m = 1024, damping 1e-5;
    the ``1/damping`` factor makes the effective step large, so keep the learning rate small.
    """
    _checks.learning_rate("mfac", learning_rate)
    _checks.in_range("mfac", "momentum", momentum, 0.0, 1.0)
    _checks.in_range("mfac", "weight_decay", weight_decay, 0.0, float("inf"))
    no_decay = isinstance(weight_decay, (int, float)) and weight_decay == 0
    no_momentum = isinstance(momentum, (int, float)) and momentum == 0
    parts = [] if no_decay else [optax.add_decayed_weights(weight_decay)]
    parts.append(scale_by_mfac(num_grads, damping))
    if not no_momentum:
        parts.append(optax.ema(momentum, debias=False))
    return optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))
