"""f-divergences ``D_f(p || q) = E_q[f(p / q)]`` as functions of the log density ratio.

Each :class:`FDivergence` holds ``f`` and its f-distill weight ``h(r) = f''(r) r^2`` (Xu et al.,
"One-step Diffusion Models with f-Divergence Distribution Matching", table of divergences),
both written as functions of ``u = log r`` so that large and small ratios stay finite where
the divergence allows. In ``u``: ``r f'(r) = df/du`` and ``h = d^2f/du^2 - df/du``
(``tests/transforms/test_f_divergence.py`` checks every closed-form ``h`` against autodiff of
``f``). A user-defined divergence may leave ``h`` out; it is then taken from ``f`` by autodiff.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

__all__ = ["FDivergence", "REVERSE_KL", "FORWARD_KL", "JENSEN_SHANNON", "HELLINGER", "JEFFREYS",
           "NEYMAN"]


def _du(fn, u):
    """Elementwise derivative of ``fn`` at ``u``."""
    return jax.jvp(fn, (u,), (jnp.ones_like(u),))[1]


@dataclasses.dataclass(frozen=True)
class FDivergence:
    """``f`` (convex, ``f(1) = 0``) and optionally ``h``, both as functions of ``u = log r``."""

    name: str
    f: Callable
    h: Optional[Callable] = None

    def __post_init__(self):
        if not callable(self.f) or (self.h is not None and not callable(self.h)):
            raise TypeError(f"FDivergence {self.name!r}: f and h are callables of u = log r")

    def weight(self, u):
        """``h(r) = f''(r) r^2`` at ``r = exp(u)``."""
        if self.h is not None:
            return self.h(u)
        return _du(lambda v: _du(self.f, v), u) - _du(self.f, u)

    def r_fprime(self, u):
        """``r f'(r)`` at ``r = exp(u)`` (the weight of the target's own parameters)."""
        return _du(self.f, u)


_LOG2 = math.log(2.0)

#: ``KL(q || p)``: ``f(r) = -log r``, ``h = 1`` (variational score distillation; mode seeking).
REVERSE_KL = FDivergence("reverse_kl", lambda u: -u, lambda u: jnp.ones_like(u))
#: ``KL(p || q)``: ``f(r) = r log r``, ``h = r`` (mass covering; the weights have heavy tails).
FORWARD_KL = FDivergence("forward_kl", lambda u: jnp.exp(u) * u, jnp.exp)
#: ``2 JS(p, q) = KL(p || m) + KL(q || m)``, ``m = (p + q) / 2``: ``f(r) = r log r - (1 + r) log((1 + r) / 2)``, ``h = r / (1 + r)``.
JENSEN_SHANNON = FDivergence(
    "jensen_shannon", lambda u: jnp.exp(u) * u - (1.0 + jnp.exp(u)) * (jax.nn.softplus(u) - _LOG2),
    jax.nn.sigmoid)
#: ``2 int (sqrt p - sqrt q)^2``: ``f(r) = 2 (sqrt r - 1)^2``, ``h = sqrt r``.
HELLINGER = FDivergence("hellinger", lambda u: 2.0 * jnp.expm1(0.5 * u) ** 2, lambda u: jnp.exp(0.5 * u))
#: ``KL(p || q) + KL(q || p)``: ``f(r) = (r - 1) log r``, ``h = 1 + r``.
JEFFREYS = FDivergence("jeffreys", lambda u: jnp.expm1(u) * u, lambda u: 1.0 + jnp.exp(u))
#: Neyman ``chi^2(q || p) / 2``: ``f(r) = (1 - r)^2 / (2 r) = cosh(log r) - 1``, ``h = 1 / r``.
NEYMAN = FDivergence("neyman", lambda u: jnp.cosh(u) - 1.0, lambda u: jnp.exp(-u))
