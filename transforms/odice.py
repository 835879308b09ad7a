"""Orthogonal-gradient updates (ODICE; Mao et al., ICLR 2024).

A DICE value objective such as ``L(V) = (1 - lam) E[V(s0)] + lam E[f*(r + gamma V(s') - V(s))]``
has two gradient terms for the parameters ``theta`` of ``V``: the *forward* gradient ``g_f``
(through ``V(s)``) and the *backward* gradient ``g_b`` (through ``V(s')``). The true gradient is
``g_f + g_b``; the semi-gradient drops ``g_b``. The orthogonal-gradient update keeps only the
part of ``g_b`` normal to ``g_f``, with all parameters flattened into one vector::

    g = g_f + eta * (g_b - (<g_b, g_f> / ||g_f||^2) g_f)

so ``<g - g_f, g_f> = 0``: the backward term never opposes (or duplicates) the forward one.
``eta = 0`` is the semi-gradient; when ``g_b`` is already orthogonal to ``g_f`` and
``eta = 1`` it is the true gradient. Gradients are of a loss to *minimize*.

Two ways to use it:

* :func:`orthogonal_grad` transforms an objective written with two copies of the parameters,
  ``objective(params_forward, params_backward, *args)``, where ``params_forward`` is used for
  ``V(s)`` and ``params_backward`` for ``V(s')``; it returns ``(value, g)``.
* :func:`orthogonalize` is an optax ``GradientTransformation`` whose input ``updates`` is the
  pair :class:`ForwardBackward` ``(forward, backward)`` (from :func:`forward_backward_grad`) and
  whose output is ``g``; chain it first: ``optax.chain(orthogonalize(eta), optax.adam(lr))``.

Sharp edges: if ``||g_f||^2`` is zero (or below the smallest normal float) the projection is
skipped and ``g = eta * g_b`` (every direction is normal to a zero vector) -- no NaN. The
reference implementation instead divides by ``max(||g_f||^2, 1e-10)``, which differs only for
tiny but nonzero ``g_f``. Terms that belong to neither side (``(1 - lam) E[V(s0)]`` in ODICE) go
in ``extra``: they are differentiated normally and added after the projection, as in the
reference code.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["ForwardBackward", "project", "orthogonal_grad", "forward_backward_grad",
           "orthogonalize"]


class ForwardBackward(NamedTuple):
    """The pair of gradients of one objective: through ``V(s)`` and through ``V(s')``."""

    forward: Any
    backward: Any


def _vdot(a, b):
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda u, v: jnp.vdot(u, v), a, b))
    return sum(leaves, jnp.zeros((), jnp.result_type(*leaves)))


def project(forward, backward, eta=1.0):
    """``g_f + eta * (g_b - (<g_b, g_f> / ||g_f||^2) g_f)`` over the flattened pytrees.

    A zero (or subnormal-norm) forward gradient gives ``eta * g_b``.
    """
    ff = _vdot(forward, forward)
    fb = _vdot(backward, forward)
    nonzero = ff > jnp.finfo(ff.dtype).tiny
    coef = jnp.where(nonzero, fb / jnp.where(nonzero, ff, 1.0), 0.0)
    return jax.tree_util.tree_map(lambda f, b: f + eta * (b - coef * f), forward, backward)


def forward_backward_grad(objective: Callable, *, has_aux: bool = False) -> Callable:
    """``params, *args -> (value, ForwardBackward(g_f, g_b))`` for
    ``objective(params_forward, params_backward, *args)`` evaluated at ``(params, params)``.

    With ``has_aux`` the objective returns ``(value, aux)`` and so does the first output.
    """

    def fn(params, *args):
        out, (g_f, g_b) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=has_aux)(
            params, params, *args)
        return out, ForwardBackward(g_f, g_b)

    return fn


def orthogonal_grad(objective: Callable, eta=1.0, *, extra: Callable | None = None,
                    has_aux: bool = False) -> Callable:
    """Transform ``objective(params_forward, params_backward, *args)`` into
    ``params, *args -> (value, g)`` with ``g`` the orthogonal-gradient update (module docs).

    Args:
      objective: the two-sided objective; ``params_forward`` must be used exactly where the
        gradient is "forward" (``V(s)``), ``params_backward`` where it is "backward" (``V(s')``).
      eta: weight of the orthogonal backward component (0: semi-gradient).
      extra: optional ``extra(params, *args)`` added to the value, its plain gradient added to
        ``g`` after the projection (e.g. ``(1 - lam) E[V(s0)]``).
      has_aux: ``objective`` returns ``(value, aux)``; the value output becomes
        ``(value, aux)``.
    """
    fb = forward_backward_grad(objective, has_aux=has_aux)

    def fn(params, *args):
        out, grads = fb(params, *args)
        g = project(grads.forward, grads.backward, eta)
        if extra is not None:
            e, ge = jax.value_and_grad(extra)(params, *args)
            g = jax.tree_util.tree_map(jnp.add, g, ge)
            out = (out[0] + e, out[1]) if has_aux else out + e
        return out, g

    return fn


def orthogonalize(eta=1.0) -> optax.GradientTransformation:
    """An optax transformation: ``ForwardBackward(g_f, g_b) -> project(g_f, g_b, eta)``.

    ``eta`` may be a traced value (works with ``optax.inject_hyperparams``). Put it first in a
    chain, since its input is the gradient pair and its output one gradient pytree.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        if not isinstance(updates, ForwardBackward):
            raise TypeError(
                "orthogonalize: `updates` must be odice.ForwardBackward(forward, backward), the "
                f"pair of gradients (see odice.forward_backward_grad); got {type(updates)}. "
                "Place orthogonalize first in optax.chain.")
        return project(updates.forward, updates.backward, eta), state

    return optax.GradientTransformation(init_fn, update_fn)
