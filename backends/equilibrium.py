"""Equilibrium propagation with holomorphic nudging and Jacobian homeostasis.

Laborieux & Zenke, "Improving equilibrium propagation without weight symmetry through Jacobian
homeostasis" (ICLR 2024). A :class:`FixedPointNet` is a recurrent network whose state ``a``
(activations) settles at a fixed point of

    a = act(pre(a, params, x) - beta * grad_a sum(loss(a, params, y)))     (nudged, beta != 0)

``pre`` gives the pre-activations, ``act`` is elementwise, ``loss`` reads the output from the
state (a readout) and returns one loss per example, so each example is nudged by ``beta``
whatever the batch size. The gradient of ``L(params) = mean(loss(a*(params), params, y))``:

- **implicit** (recurrent backprop; :meth:`FixedPointNet.implicit_gradient`, the reference):
  ``ppl.transforms.implicit.custom_fixed_point`` differentiates the fixed point exactly.
- **holomorphic EP** (:meth:`FixedPointNet.ep_gradient`): two-phase, no transposed Jacobian.
  ``da*/dbeta`` at 0 is a Cauchy integral, estimated from ``n`` nudged fixed points at
  ``beta_k = beta exp(2 pi i k / n)`` (complex states): ``da/dbeta ~ (1/n) sum_k a*_{beta_k} /
  beta_k`` (exact up to ``O(beta^n)``; ``n = 1`` uses ``(a*_beta - a*_0) / beta``, ``n = 2``
  the centred difference). The estimate is ``dloss/dparams|_a - (dpre/dparams)^T da/dbeta``.
  With ``D = diag(act'(pre))`` and ``J = dpre/da`` at the free fixed point,
  ``da/dbeta = -(D^{-1} - J)^{-1} grad_a loss`` while the true gradient needs the transpose
  ``(D^{-1} - J)^{-T}`` (per example; the estimate divides by the number of losses): EP is exact (as ``beta -> 0`` or ``n -> infinity``) iff ``J`` is
  symmetric (symmetric feedback weights), and biased by ``J``'s asymmetry otherwise.
- **Jacobian homeostasis** (:meth:`FixedPointNet.homeostatic_loss`): the unbiased estimate
  ``(||J eps||^2 - eps^T J^2 eps) / dim`` (``eps`` standard normal) of
  ``||J - J^T||_F^2 / (2 dim)``; added to the training loss (coefficient 1 for an MLP in the
  paper), it drives ``J`` towards symmetry and restores EP's alignment with the true gradient.
  :meth:`FixedPointNet.asymmetry` computes the same quantity exactly (dense Jacobian).

Sharp edges
-----------
* ``n >= 2`` runs the network in complex arithmetic: ``pre``, ``act`` and ``loss`` must be
  holomorphic in the state (``tanh``, ``exp``, ``@``, polynomials; not ``relu``, ``abs``,
  ``max`` or ``jax.nn.log_softmax``, whose max shift is not defined for complex values: write
  ``log(sum(exp(o)))`` with small logits). ``grad_a loss`` is taken with ``holomorphic=True``.
* The fixed point is found by ``iters`` damped iterations ``a <- a + dt (act(pre) - a)``
  (static; ``dt = 1`` is plain iteration, which oscillates on a layered network whose
  ``J`` has eigenvalues near -1: lower ``dt``); nothing checks convergence unless you read
  ``info["residual"]``. The map must be a contraction near the fixed point for
  the free and every nudged phase (``|beta|`` small enough); a diverging nudged phase gives
  NaNs in the estimate. The implicit reference also requires the free phase converged.
* The batch is one state (rows of ``a`` are examples); ``loss`` returns per-example losses
  (a scalar counts as one example: then ``beta`` nudges the whole batch's sum).
* ``J`` is ``dpre/da`` (the activation's derivative excluded), as in the paper's generalized
  EP; for a layered network with feedback weights ``B`` it is symmetric iff ``B = W^T``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from ppl.transforms import implicit

__all__ = ["FixedPointNet"]


def _tmap(f, *trees):
    return jax.tree_util.tree_map(f, *trees)


@dataclasses.dataclass(frozen=True)
class FixedPointNet:
    """``a* = act(pre(a*, params, x))``, read out by ``loss(a, params, y)`` (see the module doc).

    ``pre(a, params, x)`` returns an array shaped like ``a``; ``loss(a, params, y)`` one loss
    per example; ``act`` is elementwise (default ``tanh``); ``iters`` damped fixed-point
    iterations per phase with step ``dt`` in (0, 1] (static).
    """

    pre: Callable
    loss: Callable
    act: Callable = jnp.tanh
    iters: int = 100
    dt: float = 1.0

    def __post_init__(self):
        if not (callable(self.pre) and callable(self.loss) and callable(self.act)):
            raise TypeError("FixedPointNet: pre, loss and act are callables")
        if int(self.iters) != self.iters or self.iters < 1:
            raise ValueError(f"FixedPointNet: iters is a positive int, got {self.iters!r}")
        if not 0.0 < float(self.dt) <= 1.0:
            raise ValueError(f"FixedPointNet: dt (the damping step) is in (0, 1], got {self.dt!r}")

    # --- phases -------------------------------------------------------------------------------

    def step(self, a, params, x, y=None, beta=0.0):
        """One iteration of the (nudged) dynamics; ``beta`` may be complex."""
        z = self.pre(a, params, x)
        if y is not None:
            z = z - beta * self._dloss(a, params, y)
        return self.act(z) if self.dt == 1.0 else a + self.dt * (self.act(z) - a)

    def _dloss(self, a, params, y):
        if jnp.iscomplexobj(a):
            return jax.grad(lambda a_: jnp.sum(self.loss(a_, params, y)).astype(a_.dtype), holomorphic=True)(a)
        return jax.grad(lambda a_: jnp.sum(self.loss(a_, params, y)))(a)

    def mean_loss(self, a, params, y):
        """``L``: the mean of the per-example losses."""
        return jnp.mean(self.loss(a, params, y))

    def solve(self, a0, params, x, y=None, beta=0.0):
        """The (nudged) fixed point after ``iters`` iterations from ``a0``."""
        beta = jnp.asarray(beta)
        a = a0.astype(jnp.result_type(a0.dtype, beta.dtype))
        return jax.lax.fori_loop(0, self.iters, lambda _, a: self.step(a, params, x, y, beta), a)

    def residual(self, a, params, x):
        """``max |act(pre(a)) - a|``: how far ``a`` is from the free fixed point."""
        return jnp.max(jnp.abs(self.act(self.pre(a, params, x)) - a))

    # --- gradients ----------------------------------------------------------------------------

    def implicit_gradient(self, a0, params, x, y, solve=implicit.GMRES(tol=1e-5, maxiter=500)):
        """``(L, dL/dparams)`` by implicit differentiation of the free fixed point (reference)."""
        fixed = implicit.custom_fixed_point(lambda a, p: self.step(a, p, x), solve=solve)(
            lambda a, p: self.solve(a, p, x))

        def total(p):
            return self.mean_loss(fixed(a0, p), p, y)
        return jax.value_and_grad(total)(params)

    def ep_gradient(self, a0, params, x, y, beta=0.1, n=4):
        """``(L, estimate of dL/dparams, info)`` by holomorphic equilibrium propagation.

        ``n`` nudged phases with ``beta_k = beta e^{2 pi i k / n}`` (``n = 1``: one real nudge
        and the free phase). ``info``: ``a`` (the free fixed point), ``da_dbeta``,
        ``residual`` (of the free phase).
        """
        if int(n) != n or n < 1:
            raise ValueError(f"ep_gradient: n (the number of nudges) is a positive int, got {n!r}")
        beta = float(beta)
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"ep_gradient: beta is a positive float (the nudging radius), got {beta!r}")
        a_free = self.solve(jax.lax.stop_gradient(a0), params, x)
        if n == 1:
            da = (self.solve(a_free, params, x, y, beta) - a_free) / beta
        else:
            betas = beta * jnp.exp(2j * jnp.pi * jnp.arange(n) / n)
            cdt = jnp.result_type(a_free.dtype, jnp.complex64)
            nudged = jax.vmap(lambda b: self.solve(a_free.astype(cdt), params, x, y, b))(betas)
            da = jnp.real(jnp.mean(nudged / betas.reshape((n,) + (1,) * a_free.ndim), axis=0))
        da = jax.lax.stop_gradient(da.astype(a_free.dtype))
        value, g_direct = jax.value_and_grad(lambda p: self.mean_loss(a_free, p, y))(params)
        count = jax.eval_shape(lambda: self.loss(a_free, params, y)).size
        _, pull = jax.vjp(lambda p: self.pre(a_free, p, x), params)
        g_dyn, = pull(-da / count)
        grads = _tmap(jnp.add, g_direct, g_dyn)
        return value, grads, {"a": a_free, "da_dbeta": da, "residual": self.residual(a_free, params, x)}

    # --- Jacobian homeostasis -----------------------------------------------------------------

    def homeostatic_loss(self, a, params, x, key, probes=1):
        """Unbiased estimate of ``||J - J^T||_F^2 / (2 dim)`` at state ``a`` (per example, averaged).

        ``J = dpre/da`` (per example: rows of ``a`` are examples when ``a`` is 2-D); ``probes``
        Gaussian probes. ``a`` is held fixed: the gradient flows through ``J`` only.
        """
        a = jax.lax.stop_gradient(a)
        dim = a.shape[-1]
        eps = jax.random.normal(key, (probes,) + a.shape, a.dtype)

        def one(e):
            f = lambda v: self.pre(v, params, x)  # noqa: E731
            je = jax.jvp(f, (a,), (e,))[1]
            jje = jax.jvp(f, (a,), (je,))[1]
            return jnp.sum(je**2, axis=-1) - jnp.sum(e * jje, axis=-1)
        return jnp.mean(jax.vmap(one)(eps)) / dim

    def asymmetry(self, a, params, x):
        """``||J - J^T||_F^2 / (2 dim)`` exactly (dense per-example Jacobians; small states)."""
        def one(ai, xi):
            J = jax.jacfwd(lambda v: self.pre(v[None], params, xi[None])[0])(ai)
            return 0.5 * jnp.sum((J - J.T) ** 2) / ai.shape[-1]
        if a.ndim == 1:
            J = jax.jacfwd(lambda v: self.pre(v, params, x))(a)
            return 0.5 * jnp.sum((J - J.T) ** 2) / a.shape[-1]
        return jnp.mean(jax.vmap(one)(a, x))
