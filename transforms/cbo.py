"""Consensus-based optimization (CBO): an objective becomes a derivative-free particle kernel.

``N`` particles ``x_i`` in ``R^d`` move toward a consensus point, a Gibbs-weighted mean::

    c_alpha = sum_i w_i x_i,   w_i = exp(-alpha f(x_i)) / sum_j exp(-alpha f(x_j))   (log-sum-exp)
    x_i <- x_i - lam dt (x_i - c_alpha) + sigma sqrt(dt) D_i xi_i,   xi_i ~ N(0, I_d)

with isotropic noise ``D_i = ||x_i - c_alpha|| I`` or anisotropic noise
``D_i = diag(x_i - c_alpha)`` (Euler-Maruyama of the CBO SDE; Pinnau et al. 2017, Carrillo et
al. 2021). As ``alpha -> inf``, ``c_alpha`` tends to the best particle (Laplace principle); the
schedule ``alpha <- min(alpha * alpha_factor, alpha_max)`` anneals toward it. For a concentrated
ensemble ``c_alpha - mean(x) ~= -alpha Cov(x) grad f``: CBO is a stochastic relaxation of
gradient descent (Riedl, Klock, Geldhauser, Fornasier 2023, "Gradient is All You Need?").

BlackJAX style, explicit keys only::

    cbo = CBO(f, CBOConfig(dt=0.01, sigma=1.0, alpha=10.0))
    state = cbo.init(key, x0)                      # x0: (num_particles, dim)
    state, info = cbo.step(key, state)
    state, reason = cbo.minimize(key, x0, Termination(max_steps=500, energy_tol=1e-6))
    jax.vmap(lambda k, x: cbo.minimize(k, x, term))(keys, x0s)   # many independent runs

The objective is ``f(x)``, or ``f(key, x)`` with ``stochastic=True``, or ``f(x, batch)`` with
``data=...`` (``f(key, x, batch)`` with both); it returns a scalar for one particle ``x`` of
shape ``(d,)``. Each step draws one key and one data minibatch shared by all particles, so
particles are compared on the same randomness (common random numbers).

A ``CBO`` is a pytree: ``config``, ``data`` and the ``Termination`` are leaves, so changing a
hyperparameter never recompiles; the objective, the noise kind and the batch sizes are static.

Sharp edges: non-finite objective values are excluded from the consensus and flagged, and a
run that meets one stops with ``Reason.NONFINITE`` (``minimize`` raises on it when called
outside ``jit``/``vmap``; under them, inspect the reason). With ``particle_batch_size`` only that
many particles are evaluated per step, and all particles move toward their consensus.
"""
from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _sharding, _xla_cpu

__all__ = ["CBO", "CBOConfig", "Termination", "CBOState", "CBOInfo", "Reason", "consensus",
           "ISOTROPIC", "ANISOTROPIC", "GAUSSIAN", "RADEMACHER"]

ISOTROPIC = "isotropic"      # noise kinds are constants of this module, checked at construction
ANISOTROPIC = "anisotropic"
GAUSSIAN = "gaussian"        # Brownian increments xi ~ N(0, I): Euler-Maruyama
RADEMACHER = "rademacher"    # xi uniform on {-1, 1}^d: weak Euler scheme, 1 random bit a draw
_BIG = 2**31 - 1


class Reason(enum.IntEnum):
    """Why ``minimize`` stopped (its second output, an int32 array)."""

    RUNNING = 0
    ENERGY_TOL = 1   # best energy seen <= energy_tol
    MAX_EVALS = 2    # another step would exceed the evaluation budget
    STAGNATION = 3   # best energy improved by < min_delta for `patience` steps
    MAX_STEPS = 4
    NONFINITE = 5    # the objective returned NaN or inf


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CBOConfig:
    """Hyperparameters (all pytree leaves: changing them does not recompile).

    dt: step size; lam: drift strength; sigma: noise strength; alpha: initial inverse
    temperature; alpha_factor, alpha_max: schedule ``alpha <- min(alpha * factor, max)`` applied
    after each step (``alpha_factor=1`` keeps it constant).
    """

    dt: Any = 0.01
    lam: Any = 1.0
    sigma: Any = 1.0
    alpha: Any = 10.0
    alpha_factor: Any = 1.0
    alpha_max: Any = 1e5


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Termination:
    """Stopping rules for ``minimize`` (pytree leaves); the first one met is the reason."""

    max_steps: Any = 1000
    energy_tol: Any = -jnp.inf
    max_evals: Any = _BIG
    patience: Any = _BIG
    min_delta: Any = 0.0


class CBOState(NamedTuple):
    x: jax.Array            # (N, d) particles
    energy: jax.Array       # (N,) latest evaluated objective values (inf where never evaluated)
    consensus: jax.Array    # (d,) latest consensus point
    alpha: jax.Array        # current inverse temperature
    best_x: jax.Array       # (d,) best evaluated particle so far
    best_energy: jax.Array
    step: jax.Array         # steps taken
    num_evals: jax.Array    # objective evaluations so far (particle-evaluations)
    stall: jax.Array        # steps since best_energy last improved by min_delta (minimize)
    nonfinite: jax.Array    # whether a non-finite objective value was ever seen


class CBOInfo(NamedTuple):
    min_energy: jax.Array   # smallest energy among this step's evaluated particles
    nonfinite: jax.Array    # this step saw a non-finite value
    alpha: jax.Array        # alpha used in this step


def consensus(x: jax.Array, energy: jax.Array, alpha) -> jax.Array:
    """``c = sum_i softmax(-alpha * energy)_i x_i``, computed as ``sum_i w_i x_i / sum_i w_i``
    with ``w_i = exp(-alpha (energy_i - min energy))`` (no overflow; the best weighs 1).

    Particles with ``energy = inf`` get weight zero; if all are inf the result is NaN.
    """
    return _consensus_t(x.T, energy, jnp.min(energy), alpha)


def _consensus_t(xt, energy, min_energy, alpha):
    # `consensus` of the particles xt.T (xt of shape (d, N)) given min(energy)
    w = jnp.exp(-alpha * (energy - min_energy))
    return (xt @ w) / jnp.sum(w)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CBO:
    """The CBO kernel for ``objective`` (see the module docstring).

    Args:
      objective: ``f(x)``, ``f(key, x)`` (``stochastic=True``), ``f(x, batch)`` (``data``
        given) or ``f(key, x, batch)``; returns a scalar for one particle of shape ``(d,)``.
      config: a :class:`CBOConfig`.
      noise: ``ISOTROPIC`` or ``ANISOTROPIC`` (the latter scales per coordinate and suits
        high dimensions).
      particle_batch_size: evaluate only this many randomly chosen particles per step.
      data: a pytree of arrays with a common leading axis, minibatched for ``f(x, batch)``.
      data_batch_size: minibatch size drawn (without replacement) per step.
      stochastic: the objective takes a key first.
      increments: ``GAUSSIAN`` (Euler-Maruyama, as in CBXpy) or ``RADEMACHER``: random signs
        with the same mean and covariance, the simplified weak Euler scheme (same weak order 1
        in dt). It skips the normal transform (``erf_inv``) of each draw, a sizeable part of a
        step on CPU (measured in BENCHMARKS.md, CBO).
      particle_axis: a mesh axis name: the particles evaluated each step (and their energies)
        are split along it (``jax.lax.with_sharding_constraint``), so each device evaluates the
        objective on its block; call ``init``/``step``/``minimize`` under ``with
        jax.set_mesh(mesh):`` (``AxisType.Auto`` axes; the number of evaluated particles
        divisible by the axis size). Same key, same result up to the order of the consensus's
        float additions.
    """

    objective: Callable = dataclasses.field(metadata=dict(static=True))
    config: CBOConfig = CBOConfig()
    noise: str = dataclasses.field(default=ISOTROPIC, metadata=dict(static=True))
    particle_batch_size: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    data: Any = None
    data_batch_size: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    stochastic: bool = dataclasses.field(default=False, metadata=dict(static=True))
    increments: str = dataclasses.field(default=GAUSSIAN, metadata=dict(static=True))
    particle_axis: str | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        if not callable(self.objective):
            raise TypeError(f"CBO: `objective` must be callable, got {self.objective!r}.")
        if self.noise not in (ISOTROPIC, ANISOTROPIC):
            raise ValueError(f"CBO: `noise` must be cbo.ISOTROPIC or cbo.ANISOTROPIC, "
                             f"got {self.noise!r}.")
        if self.increments not in (GAUSSIAN, RADEMACHER):
            raise ValueError(f"CBO: `increments` must be cbo.GAUSSIAN or cbo.RADEMACHER, "
                             f"got {self.increments!r}.")
        if not isinstance(self.config, CBOConfig):
            raise TypeError(f"CBO: `config` must be a CBOConfig, got {type(self.config)}.")
        if self.data_batch_size is not None and self.data is None:
            raise ValueError("CBO: `data_batch_size` given without `data`; pass data=... "
                             "(a pytree with a leading data axis) or drop data_batch_size.")

    # -- evaluation ----------------------------------------------------------------------
    def _num_data(self):
        return jax.tree_util.tree_leaves(self.data)[0].shape[0]

    def _energies(self, key, x, axis=0):
        k_obj, k_data = _xla_cpu.split(key)
        args = ()
        if self.data is not None:
            batch = self.data
            if self.data_batch_size is not None:
                idx = jax.random.choice(k_data, self._num_data(), (self.data_batch_size,),
                                        replace=False)
                batch = jax.tree_util.tree_map(lambda a: a[idx], self.data)
            args = (batch,)
        if self.stochastic:
            f = lambda xi: self.objective(k_obj, xi, *args)
        else:
            f = lambda xi: self.objective(xi, *args)
        if self.particle_axis is None:
            return jax.vmap(f, in_axes=axis)(x)
        x = _sharding.split_along(x, self.particle_axis, axis, "CBO")
        return _sharding.split_along(jax.vmap(f, in_axes=axis)(x), self.particle_axis, 0, "CBO")

    def _check_inputs(self, x0, check_objective=True):
        if self.data is not None:
            sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None
                     for leaf in jax.tree_util.tree_leaves(self.data)}
            if len(sizes) != 1 or None in sizes:
                raise ValueError(f"CBO: every leaf of `data` needs the same leading (data) "
                                 f"axis; got leading sizes {sorted(map(str, sizes))}.")
            n = sizes.pop()
            if self.data_batch_size is not None and not 1 <= self.data_batch_size <= n:
                raise ValueError(f"CBO: `data_batch_size` must be in [1, {n}] (the data "
                                 f"size), got {self.data_batch_size}.")
        shape = np.shape(x0)
        if len(shape) != 2 or shape[0] < 2 or shape[1] < 1:
            raise ValueError(f"CBO: the particles `x0` must have shape (num_particles, dim) "
                             f"with num_particles >= 2, got shape {shape}. A single point x "
                             f"can be spread as x + scale * jax.random.normal(key, (N, x.size)).")
        if not jnp.issubdtype(jnp.result_type(x0), jnp.floating):
            raise TypeError(f"CBO: `x0` must be floating point, got dtype {jnp.result_type(x0)}.")
        pbs = self.particle_batch_size
        if pbs is not None and not 2 <= pbs <= shape[0]:
            raise ValueError(f"CBO: `particle_batch_size` must be in [2, num_particles="
                             f"{shape[0]}], got {pbs}.")
        if not check_objective:
            return
        out = jax.eval_shape(lambda k, x: self._energies(k, x), jax.random.key(0), x0)
        if out.shape != (shape[0],):
            raise ValueError(f"CBO: the `objective` must return a scalar per particle (input "
                             f"shape ({shape[1]},)), but returned shape {out.shape[1:]}.")

    # -- kernel --------------------------------------------------------------------------
    def init(self, key, x0) -> CBOState:
        """Evaluate the initial particles ``x0`` (shape ``(N, d)``) and build the state.

        Raises ``ValueError`` on wrong shapes and, when values are concrete, on non-finite
        objective values at ``x0``."""
        self._check_inputs(x0)
        x0 = jnp.asarray(x0)
        energy = self._energies(key, x0)
        bad = ~jnp.isfinite(energy)
        if not _is_traced(bad) and bool(jnp.any(bad)):
            idx = np.flatnonzero(np.asarray(bad))[:5].tolist()
            raise ValueError(f"CBO.init: the `objective` returned non-finite values at "
                             f"particles {idx} of `x0` (values {np.asarray(energy)[idx]}). CBO "
                             f"needs finite values: start inside the domain, or return a large "
                             f"finite penalty instead of inf/NaN outside it.")
        e = jnp.where(bad, jnp.inf, energy)
        i = jnp.argmin(e)
        alpha = jnp.asarray(self.config.alpha, x0.dtype)
        return CBOState(x=x0, energy=e, consensus=consensus(x0, e, alpha), alpha=alpha,
                        best_x=x0[i], best_energy=e[i], step=jnp.zeros((), jnp.int32),
                        num_evals=jnp.asarray(x0.shape[0], jnp.int32),
                        stall=jnp.zeros((), jnp.int32), nonfinite=jnp.any(bad))

    def evals_per_step(self, num_particles: int) -> int:
        return self.particle_batch_size or num_particles

    def step(self, key, state: CBOState) -> tuple[CBOState, CBOInfo]:
        """One CBO step: evaluate, form the consensus, move every particle, anneal alpha."""
        n, d = state.x.shape
        new, info = self._step_flat(key, state._replace(x=_xla_cpu.to_coordinate_major(state.x)), (d, n))
        return new._replace(x=_xla_cpu.from_coordinate_major(new.x, n, d)), info

    def _step_flat(self, key, state: CBOState, shape) -> tuple[CBOState, CBOInfo]:
        # `step` on a state whose particles are stored flat and coordinate-major
        # (_xla_cpu.to_coordinate_major: shape (d * N,), viewed as (d, N) where needed; why,
        # and what it buys, in _xla_cpu). `minimize` carries this layout.
        cfg = self.config
        k_sel, k_eval, k_noise = _xla_cpu.split(key, 3)
        d, n = shape
        x = state.x.reshape(shape)
        if self.particle_batch_size is None:
            idx, x_eval = None, x      # every particle: no gather/scatter (slow on CPU)
        else:
            idx = jax.random.permutation(k_sel, n)[: self.particle_batch_size]
            x_eval = x[:, idx]
        raw = self._energies(k_eval, x_eval, axis=1)
        ok = jnp.isfinite(raw)
        e = jnp.where(ok, raw, jnp.inf)
        i = jnp.argmin(e)
        c = jnp.where(e[i] < jnp.inf, _consensus_t(x_eval, e, e[i], state.alpha),
                      state.consensus)
        diff = state.x - jnp.repeat(c, n)
        xi = _increments(k_noise, (n * d,), state.x.dtype, self.increments)
        if self.noise == ISOTROPIC:
            scale = jnp.tile(jnp.linalg.norm(diff.reshape(shape), axis=0), d)
        else:
            scale = diff
        x_new = state.x - cfg.lam * cfg.dt * diff + cfg.sigma * jnp.sqrt(cfg.dt) * scale * xi
        better = e[i] < state.best_energy
        alpha_new = jnp.minimum(state.alpha * cfg.alpha_factor, cfg.alpha_max)
        new = state._replace(
            x=x_new, energy=e if idx is None else state.energy.at[idx].set(e), consensus=c,
            alpha=alpha_new.astype(state.alpha.dtype),
            best_x=jnp.where(better, x_eval[:, i], state.best_x),
            best_energy=jnp.where(better, e[i], state.best_energy),
            step=state.step + 1, num_evals=state.num_evals + x_eval.shape[1],
            nonfinite=state.nonfinite | ~jnp.all(ok))
        return new, CBOInfo(min_energy=e[i], nonfinite=~jnp.all(ok), alpha=state.alpha)

    def minimize(self, key, x0, termination: Termination = Termination()):
        """Run ``step`` in a ``lax.while_loop`` until a :class:`Termination` rule fires.

        Returns ``(state, reason)`` with ``reason`` an int32 :class:`Reason` code. Compiled
        once per objective/shape: the CBO (config, data) and the termination are arguments.
        """
        self._check_inputs(x0, check_objective=False)  # `init` checks it, once per compile
        state, reason = _minimize(self, key, x0, termination)
        if not _is_traced(reason) and np.any(np.asarray(reason) == Reason.NONFINITE):
            raise FloatingPointError(
                f"CBO.minimize: the `objective` returned a non-finite value (NaN or inf) "
                f"during the run (stopped at step {int(np.max(np.asarray(state.step)))}). "
                f"Return a large finite penalty outside the domain, or reduce sigma/dt so "
                f"particles stay where the objective is defined.")
        return state, reason


def _increments(key, shape, dtype, kind):
    size = math.prod(shape)
    if kind == GAUSSIAN:
        return _xla_cpu.normal(key, shape, dtype)   # jax.random.normal's numbers
    words = _xla_cpu.bits(key, (-(-size // 32),))
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    return (2.0 * bits.reshape(-1)[:size].astype(dtype) - 1.0).reshape(shape)


def _is_traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def _reason(cbo: CBO, state: CBOState, term: Termination):
    per_step = cbo.evals_per_step(state.energy.shape[0])
    conds = [state.nonfinite, state.best_energy <= term.energy_tol,
             state.num_evals + per_step > term.max_evals, state.stall >= term.patience,
             state.step >= term.max_steps]
    codes = [Reason.NONFINITE, Reason.ENERGY_TOL, Reason.MAX_EVALS, Reason.STAGNATION,
             Reason.MAX_STEPS]
    reason = jnp.asarray(Reason.RUNNING, jnp.int32)
    for cond, code in reversed(list(zip(conds, codes))):   # first listed wins
        reason = jnp.where(cond, jnp.int32(code), reason)
    return reason


@jax.jit
def _minimize(cbo: CBO, key, x0, term: Termination):
    k_init, k_run = _xla_cpu.split(key)
    state = cbo.init(k_init, x0)

    def cond(carry):
        _, state = carry
        return _reason(cbo, state, term) == Reason.RUNNING

    def body(step):
        def run(carry):
            key, state = carry
            key, sub = _xla_cpu.split(key)
            old_best = state.best_energy
            state, _ = step(sub, state)
            improved = state.best_energy < old_best - term.min_delta
            return key, state._replace(stall=jnp.where(improved, 0, state.stall + 1))
        return run

    n, d = state.x.shape
    step = lambda k, st: cbo._step_flat(k, st, (d, n))   # see _step_flat for the layout
    flat = state._replace(x=_xla_cpu.to_coordinate_major(state.x))
    _, state = jax.lax.while_loop(cond, body(step), (k_run, flat))
    state = state._replace(x=_xla_cpu.from_coordinate_major(state.x, n, d))
    return state, _reason(cbo, state, term)
