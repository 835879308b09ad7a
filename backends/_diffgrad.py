"""diffGrad (Dubey et al., IEEE TNNLS 2020; the v2 update of the authors' ``diffGrad_v2.py``).

Adam's step damped per coordinate by a *friction* coefficient from the change of the gradient::

    m_t  = b1 m_{t-1} + (1 - b1) g_t            v_t = b2 v_{t-1} + (1 - b2) g_t^2
    xi_t = sigmoid(|g_{t-1} - g_t|)             (g_0 = 0)
    step = sqrt(1 - b2^t) / (1 - b1^t) * xi_t * m_t / (sqrt(v_t) + eps)

and ``params <- params - learning_rate * step``. ``xi`` lies in [0.5, 1): a coordinate whose
gradient barely changes moves at half of Adam's speed, one whose gradient changes fast at
nearly Adam's. The authors' first file stored the previous gradient by reference, so it was
overwritten by the current one and ``xi`` was always 0.5 (Adam at half the rate); v2 copies
it, as here (``prev_grad`` in the state).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import _checks


class ScaleByDiffGradState(NamedTuple):
    count: jax.Array  # int32: the number of updates so far
    mu: Any           # first moment, like params
    nu: Any           # second moment, like params
    prev_grad: Any    # the previous gradient (zeros before the first step)


def scale_by_diffgrad(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """diffGrad's step (without the learning rate); chain with ``optax.scale_by_learning_rate``.

    Moments are kept in the parameters' dtypes; bias corrections are computed in float32
    (float64 under x64 for float64 parameters) and cast.
    """
    _checks.in_range("scale_by_diffgrad", "b1", b1, 0.0, 1.0)
    _checks.in_range("scale_by_diffgrad", "b2", b2, 0.0, 1.0)
    _checks.in_range("scale_by_diffgrad", "eps", eps, 0.0, float("inf"))

    def init_fn(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return ScaleByDiffGradState(jnp.zeros([], jnp.int32), zeros, zeros, zeros)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = optax.safe_increment(state.count)
        mu = jax.tree_util.tree_map(lambda m, g: (b1 * m + (1 - b1) * g).astype(g.dtype), state.mu, updates)
        nu = jax.tree_util.tree_map(lambda v, g: (b2 * v + (1 - b2) * g * g).astype(g.dtype), state.nu, updates)

        t = count.astype(jnp.float32)  # one bias correction for all leaves (not one per leaf)
        scale32 = jnp.sqrt(1 - jnp.asarray(b2, jnp.float32) ** t) / (1 - jnp.asarray(b1, jnp.float32) ** t)

        def step(m, v, g, g_prev):
            wide = jnp.promote_types(g.dtype, jnp.float32)
            if wide == jnp.float32:
                scale = scale32
            else:
                tw = count.astype(wide)
                scale = jnp.sqrt(1 - jnp.asarray(b2, wide) ** tw) / (1 - jnp.asarray(b1, wide) ** tw)
            # sigmoid(a) = (1 + tanh(a / 2)) / 2: XLA:CPU's tanh is a fast rational approximation,
            # its logistic an exp and a division (1.5x the cost of the whole Adam update here)
            xi = 0.5 + 0.5 * jnp.tanh(0.5 * jnp.abs(g_prev.astype(wide) - g.astype(wide)))
            out = scale * xi * m.astype(wide) / (jnp.sqrt(v.astype(wide)) + eps)
            return out.astype(g.dtype)

        out = jax.tree_util.tree_map(step, mu, nu, updates, state.prev_grad)
        return out, ScaleByDiffGradState(count, mu, nu, updates)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def diffgrad(learning_rate=1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
             weight_decay: float = 0.0) -> optax.GradientTransformationExtraArgs:
    """The diffGrad optimizer (v2). ``learning_rate`` may be a schedule.

    ``weight_decay`` is an L2 penalty added to the gradient before the moments, as in the
    reference (not decoupled as in AdamW).
    """
    _checks.learning_rate("diffgrad", learning_rate)
    _checks.in_range("diffgrad", "weight_decay", weight_decay, 0.0, float("inf"))
    no_decay = isinstance(weight_decay, (int, float)) and weight_decay == 0
    parts = [] if no_decay else [optax.add_decayed_weights(weight_decay)]
    return optax.chain(*parts, scale_by_diffgrad(b1, b2, eps), optax.scale_by_learning_rate(learning_rate))
