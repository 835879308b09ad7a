"""Baselines (control variates by a constant shift), as wrappers around another estimator."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ppl.transforms import Estimator, ScoreFunction
from ppl.transforms._estimator import estimator_dataclass

from ._util import bcast_like

__all__ = ["Baseline", "EMABaseline", "baseline_loss"]


def _shifted(inner, b, key, site, kont):
    """Run ``inner`` on the continuation ``k - b``, then add ``b`` back to the value."""
    def kont_b(k, x, dx):
        out, dout = kont(k, x, dx)
        return [(o - bi).astype(o.dtype) for o, bi in zip(out, bcast_like(b, out))], dout

    out, dout = inner.jvp(key, site, kont_b)
    return [(o + bi).astype(o.dtype) for o, bi in zip(out, bcast_like(b, out))], dout


@estimator_dataclass
class Baseline(Estimator):
    """A constant (or user-learned) baseline ``b`` around an inner estimator.

    Identity: ``d/dt E_{p_t}[k] = d/dt E_{p_t}[k - b] + d/dt b`` and ``d/dt b = 0``: the inner
    estimator sees the shifted continuation ``k - b`` and ``b`` is added back to the value.
    For ``inner=ScoreFunction()`` this is ``dk + (k - b) * dlog p``, the classic baseline.
    Works around *any* estimator (it only passes objects), but changes only the variance of
    those not invariant to constant shifts: ScoreFunction and LeaveOneOut's per-sample terms.
    Reparam, Enum, MVD, ARM/DisARM are shift-invariant already (no effect, no harm).

    Preconditions: ``b`` does not depend on the sample at this site (a constant, a parameter,
    or a function of *earlier* randomness). ``value`` is a pytree leaf: a scalar/array used
    for every output, or a list with one per output; ADEV does not differentiate it. Learn
    it yourself by minimizing ``E[(k - b)^2]``, e.g. ``baseline_loss(value_estimate, b)``
    with optax, which drives ``b`` to ``E[k]``. Variance: ``Var[(k - b) dlog p]``, minimal
    near ``b = E[k dlog p^2] / E[dlog p^2]``; far smaller than without when ``|E[k]|`` is large.
    """

    inner: Estimator = dataclasses.field(default_factory=ScoreFunction)
    value: object = 0.0

    @property
    def unbiased(self):
        return self.inner.unbiased

    def check(self, site):
        self.inner.check(site)

    def jvp(self, key, site, kont):
        return _shifted(self.inner, self.value, key, site, kont)

    def describe(self):
        return f"Baseline({self.inner.describe()})"


@estimator_dataclass
class EMABaseline(Baseline):
    """A baseline tracking an exponential moving average of the objective's value.

    Same identity as :class:`Baseline`. The state is explicit: ``est.update(observed)``
    returns a *new* estimator with ``value <- decay * value + (1 - decay) * observed`` (pure;
    ``value`` and ``decay`` are pytree leaves, so passing the updated estimator into a jitted
    step does not recompile). Unbiased as long as you update *after* using the estimate of a
    step (the baseline then depends only on earlier samples). Variance: as Baseline with
    ``b`` close to the recent mean of the objective.
    """

    decay: object = 0.9  # after Baseline's ``inner`` and ``value``

    def update(self, observed) -> "EMABaseline":
        new = jax.tree_util.tree_map(lambda b, o: self.decay * b + (1 - self.decay) * jax.lax.stop_gradient(o),
                                     self.value, observed)
        return dataclasses.replace(self, value=new)

    def describe(self):
        return f"EMABaseline({self.inner.describe()})"


def baseline_loss(value_estimate, b):
    """``sum (value_estimate - b)^2`` with the estimate held constant: minimize it over ``b``."""
    v = jax.tree_util.tree_leaves(jax.lax.stop_gradient(value_estimate))
    bs = jax.tree_util.tree_leaves(b)
    bs = bs * len(v) if len(bs) == 1 else bs
    return sum(jnp.sum((vi - bi) ** 2) for vi, bi in zip(v, bs))
