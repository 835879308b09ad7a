"""Constructs of programmable variational inference, used inside objective programs.

- :func:`sim` simulates a guide *inside* an objective: its random choices stay visible to
  ADEV (each estimated by its chosen estimator) and its log density comes with them.
- :func:`density` is the log density of a program at given choices (observations included).
- :class:`Marginal` (approximate marginalization) treats a program with auxiliary choices
  as a distribution over a selection of its addresses; its density is estimated by
  importance sampling with a user-given proposal for the auxiliary choices.
- :class:`SIR` (approximate normalization) targets a model with observations through
  sampling-importance-resampling from a proposal program.

Each construct returns ``(choices, log_density_estimate)`` pairs whose use in the objectives
of :mod:`ppl.transforms.objectives` keeps the gradient estimate unbiased for the objective as
written.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

import numpyro.distributions as nd

from ppl._site import normalize_address, sample
from ppl.choicemap import ChoiceMap
from ppl.interpreters import AddressMismatchError, assess, harvest

__all__ = ["sim", "density", "model_density", "ModelGuideMismatchError", "Marginal", "SIR", "split_choices"]


def sim(program, *args):
    """Simulate ``program(*args)`` inside an objective: ``Trace`` with choices and log density."""
    return harvest(program)(*args)


def density(program, choices, *args):
    """``log p(choices, observations)`` of ``program(*args)`` (every sampled address given)."""
    return assess(program)(choices, *args)[0]


class ModelGuideMismatchError(AddressMismatchError):
    """The guide's choices do not match the model's unobserved sites (raised at trace time).

    A subclass of :class:`ppl.AddressMismatchError` (``missing`` = ``model_only``, ``extra`` =
    ``guide_only``). ``model_only``: addresses the model samples that the guide does not; ``guide_only``:
    addresses the guide samples that the model lacks.
    """

    def __init__(self, message, model_only=(), guide_only=()):
        super().__init__(message, model_only, guide_only)
        self.model_only = list(model_only)
        self.guide_only = list(guide_only)


def model_density(model, guide_choices, *args):
    """:func:`density` of ``model`` at a guide's choices; a mismatch names the model and the guide."""
    try:
        return density(model, guide_choices, *args)
    except AddressMismatchError as e:
        parts = []
        if e.missing:
            parts.append(f"the model samples {_names(e.missing)}, which the guide does not")
        if e.extra:
            parts.append(f"the guide samples {_names(e.extra)}, which the model lacks")
        raise ModelGuideMismatchError(
            "model/guide mismatch: " + "; ".join(parts) + ". The guide must sample every "
            "unobserved site of the model under the same address (observed sites excluded) and "
            "no others; rename the guide's sites to match.", e.missing, e.extra) from None


def _names(names):
    return ", ".join(repr(n) for n in names)


def split_choices(choices, keep):
    """``(kept, rest)``: the choices under the addresses (or prefixes) in ``keep``."""
    keep = [normalize_address(a) for a in keep]
    kept, rest = {}, {}
    for a, v in ChoiceMap.from_dict(choices).items():
        (kept if any(a[:len(k)] == k for k in keep) else rest)[a] = v
    return ChoiceMap(kept), ChoiceMap(rest)


@dataclasses.dataclass(frozen=True)
class Marginal:
    """``q(x) = integral q(x, u) du`` for ``x`` = the choices under ``keep`` of ``program``.

    ``proposal(x, *args)`` is a program over the auxiliary addresses ``u`` (the rest), e.g. a
    learned reverse model ``r(u | x)``; ``num_particles`` = m extra proposal draws.

    - ``sample(*args) -> (x, log_q_hat)`` draws ``(x, u0) ~ q`` and returns
      ``log_q_hat = log (1/(m+1)) sum_j q(x, u_j) / r(u_j | x)`` with ``u_1..u_m ~ r``.
      ``1/q_hat`` is an *unbiased* estimate of ``1/q(x)``, so ``-log q_hat`` in an ELBO
      keeps a lower bound (m = 0 is HVI, m > 0 IWHVI; SIVI is a proposal equal to the
      auxiliary prior).
    - ``density(x, *args) -> log_q_hat`` with ``q_hat = (1/m) sum_j q(x, u_j) / r(u_j | x)``,
      ``u_j ~ r``: an *unbiased* estimate of ``q(x)`` (for a marginal used as a model).
    """

    program: Callable
    keep: tuple
    proposal: Callable
    num_particles: int = 0

    def _log_w(self, x, u, args):
        return density(self.program, x.merge(u), *args) - density(self.proposal, u, x, *args)

    def _extra(self, x, args, m):
        """``m`` log weights of proposal draws of the auxiliary choices, vmapped."""
        def one(_):
            tr = sim(self.proposal, x, *args)
            return self._log_w(x, tr.choices, args)

        return jax.vmap(one)(jnp.arange(m))

    def sample(self, *args):
        tr = sim(self.program, *args)
        x, u0 = split_choices(tr.choices, self.keep)
        lw0 = tr.score - density(self.proposal, u0, x, *args)
        if self.num_particles == 0:
            return x, lw0
        lws = jnp.concatenate([lw0[None], self._extra(x, args, self.num_particles)])
        return x, logsumexp(lws) - jnp.log(self.num_particles + 1.0)

    def density(self, x, *args):
        m = max(self.num_particles, 1)
        x = ChoiceMap.from_dict(x)
        return logsumexp(self._extra(x, args, m)) - jnp.log(float(m))


@dataclasses.dataclass(frozen=True)
class SIR:
    """Approximate normalization of ``model`` (with its observations) by SIR.

    ``proposal(*args)`` draws the model's latent choices. ``sample(model_args, proposal_args)``
    draws ``n`` particles, weights them by ``p(x, y) / q(x)``, resamples one, and returns it
    with ``log_q_hat = log p(x, y) - log((1/n) sum_i w_i)``: used as a variational family in an
    ELBO this gives the IWAE bound with ``n`` particles.
    """

    model: Callable
    proposal: Callable
    num_particles: int

    def sample(self, model_args=(), proposal_args=()):
        def one(_):
            tr = sim(self.proposal, *proposal_args)
            lp = model_density(self.model, tr.choices, *model_args)
            return tr.choices, lp, lp - tr.score

        choices, lps, lws = jax.vmap(one)(jnp.arange(self.num_particles))
        # The resampling index is a random choice too; the value returned does not depend
        # on it (lps[i] - log_q_hat[i] = log_z), so no gradient is owed to its distribution.
        i = sample(("sir", "index"), nd.Categorical(logits=jax.lax.stop_gradient(lws)))
        x = jax.tree_util.tree_map(lambda a: a[i], choices)
        log_z = logsumexp(lws) - jnp.log(float(self.num_particles))
        return x, lps[i] - log_z
