"""Hard physical constraints by a per-subdomain least-squares layer, with a mixture of experts.

Chalapathi, Du, Krishnapriyan, "Scaling physics-informed hard constraints with mixture-of-experts"
(ICLR 2024). A network outputs ``N`` basis functions ``phi_j(x, t)``; the solution is not the
network's output but ``u = sum_j w_j phi_j`` with weights that *solve* the PDE. The domain is
split into ``K`` subdomains (``split_domain``, e.g. ``[1, 4]``: one spatial x four temporal
slabs); expert ``k`` solves the nonlinear least-squares problem

    w_k* = argmin_w  sum_{x in S_k} ||PDE[sum_j w_j phi_j](x)||^2  +  IC / BC terms

over points ``S_k`` sampled in its subdomain, by Levenberg-Marquardt (``optimistix``), and
``u = sum_j w_{k,j}* phi_j`` on subdomain ``k`` (``mixture``). The experts are independent, so
they are ``vmap``-ed. Gradients with respect to the network parameters (which enter through the
basis values the residual is given) follow from the implicit function theorem at the optimum,
``dw*/dtheta = -(J^T J)^{-1} J^T dr/dtheta`` (optimistix's ``ImplicitAdjoint``); nothing is
unrolled, so memory does not grow with the number of LM iterations.

The layer itself is PDE-agnostic: :class:`HardConstraint` takes ``residual(w, data)`` returning
the residual vector of one expert, where ``data`` is any pytree (basis values and derivatives at
the expert's points, the initial condition, ...). ``HardConstraint.solve`` maps it over the
leading (expert) axis of every leaf of ``data``.

Needs float64: LM's stopping test and the implicit-function linear solve at ``rtol``/``atol``
near 1e-6 are below float32 resolution of the normal equations, so ``solve`` refuses float32
data (enable with ``jax.config.update("jax_enable_x64", True)`` or ``with jax.enable_x64():``).
Install with the ``hardconstraints`` extra (``pip install ppl[hardconstraints]``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

try:
    import optimistix as optx
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ppl.backends.hard_constraints needs optimistix (Levenberg-Marquardt with implicit "
        "differentiation); install the extra: pip install 'ppl[hardconstraints]' "
        "(optimistix==0.1.0, lineax==0.1.1)") from e

__all__ = ["ExpertSolution", "HardConstraint", "Subdomains", "mixture", "split_domain"]


class ExpertSolution(NamedTuple):
    """Per-expert result of :meth:`HardConstraint.solve`: ``weights`` ``(K, N)``, the number of
    LM steps taken ``(K,)`` and whether each expert's solve met its tolerance ``(K,)``."""
    weights: jax.Array
    num_steps: jax.Array
    converged: jax.Array


def _positive_finite(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"HardConstraint({name}={value!r}): must be a finite number > 0") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"HardConstraint({name}={value!r}): must be a finite number > 0 "
                         "(LM stops when the step is below atol + rtol * |w|)")


@dataclasses.dataclass(frozen=True)
class HardConstraint:
    """A least-squares constraint layer solved per expert by Levenberg-Marquardt.

    ``residual(w, data) -> r`` gives one expert's residual vector (1-D) for weights ``w`` of
    shape ``(num_basis,)``; the layer returns ``argmin_w ||r(w, data)||^2`` for every expert,
    differentiable in ``data`` by the implicit function theorem. ``rtol``/``atol`` are LM's
    step tolerances, ``max_steps`` its budget. With ``throw=True`` a solve that does not meet the
    tolerance within ``max_steps`` raises at run time; with ``throw=False`` it returns the last
    iterate and reports it in ``ExpertSolution.converged`` (what the paper's code does in
    training, where an early, poor basis may need more steps than allowed).
    """
    residual: Callable[[jax.Array, Any], jax.Array]
    num_basis: int
    rtol: float = 1e-6
    atol: float = 1e-6
    max_steps: int = 100
    throw: bool = True

    def __post_init__(self):
        if not callable(self.residual):
            raise ValueError(f"HardConstraint(residual={self.residual!r}): must be a function "
                             "residual(w, data) -> 1-D residual vector")
        for name in ("num_basis", "max_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"HardConstraint({name}={v!r}): must be an integer >= 1")
        _positive_finite("rtol", self.rtol)
        _positive_finite("atol", self.atol)

    def _check_one(self, data, w0):
        for leaf in jax.tree_util.tree_leaves(data):
            dt = jnp.result_type(leaf)
            if jnp.issubdtype(dt, jnp.floating) and jnp.finfo(dt).bits < 64:
                raise ValueError(
                    f"HardConstraint.solve: data has dtype {dt}; the LM solve and its implicit "
                    "gradient need float64. Enable it with jax.config.update('jax_enable_x64', "
                    "True) (or `with jax.enable_x64():`) and build the data in float64.")
        r = jax.eval_shape(self.residual, w0, data)
        if not hasattr(r, "shape") or len(r.shape) != 1:
            raise ValueError(f"HardConstraint.residual must return a 1-D vector for one expert; "
                             f"got {getattr(r, 'shape', r)}")
        if r.shape[0] < self.num_basis:
            raise ValueError(f"HardConstraint: the residual has {r.shape[0]} entries for "
                             f"{self.num_basis} unknown weights; sample at least num_basis points "
                             "per expert (the least-squares problem is underdetermined)")

    def _solve(self, data, w0):
        # self.residual itself (not a fresh lambda) so optimistix's jit cache is hit across calls
        sol = optx.least_squares(
            self.residual, optx.LevenbergMarquardt(rtol=self.rtol, atol=self.atol),
            w0, args=data, max_steps=self.max_steps, adjoint=optx.ImplicitAdjoint(),
            throw=self.throw)
        return sol.value, sol.stats["num_steps"], sol.result == optx.RESULTS.successful

    def solve_one(self, data, w0=None) -> ExpertSolution:
        """One expert (no expert axis): ``data`` as ``residual`` takes it; returns weights ``(N,)``."""
        w0 = self._w0(w0, None)
        self._check_one(data, w0)
        return ExpertSolution(*self._solve(data, w0))

    def solve(self, data, w0=None) -> ExpertSolution:
        """All experts at once: every leaf of ``data`` carries a leading expert axis ``K``;
        ``w0`` is ``None`` (zeros), ``(N,)`` (shared) or ``(K, N)``. Returns weights ``(K, N)``."""
        leaves = jax.tree_util.tree_leaves(data)
        if not leaves:
            raise ValueError("HardConstraint.solve: data has no arrays; give each expert's "
                             "basis values with a leading expert axis")
        sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
        if len(sizes) != 1 or None in sizes:
            raise ValueError("HardConstraint.solve: every leaf of data needs the same leading "
                             f"expert axis; got leading sizes {sorted(map(str, sizes))}. Stack each "
                             "expert's data along axis 0 (use solve_one for a single expert)")
        (k,) = sizes
        w0 = self._w0(w0, k)
        self._check_one(jax.tree_util.tree_map(lambda x: x[0], data), w0[0])
        return ExpertSolution(*jax.vmap(self._solve)(data, w0))

    def _w0(self, w0, k):
        n = self.num_basis
        if w0 is None:
            w0 = jnp.zeros((n,), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
        w0 = jnp.asarray(w0)
        if k is None:
            if w0.shape != (n,):
                raise ValueError(f"HardConstraint.solve_one: w0 has shape {w0.shape}; expected ({n},)")
            return w0
        if w0.shape == (n,):
            return jnp.broadcast_to(w0, (k, n))
        if w0.shape != (k, n):
            raise ValueError(f"HardConstraint.solve: w0 has shape {w0.shape}; expected ({n},) or "
                             f"({k}, {n}) for {k} experts and num_basis={n}")
        return w0


@dataclasses.dataclass(frozen=True)
class Subdomains:
    """A box ``[lower, upper]`` split into ``prod(split)`` equal boxes, expert index in C order
    (the last axis fastest): ``split=(1, 4)`` over ``(x, t)`` gives four time slabs."""
    lower: tuple
    upper: tuple
    split: tuple

    @property
    def num_experts(self) -> int:
        return int(np.prod(self.split))

    def boxes(self):
        """``(lo, hi)``, each ``(K, d)``: the corners of every expert's box."""
        lo, hi, s = np.asarray(self.lower), np.asarray(self.upper), np.asarray(self.split)
        idx = np.stack(np.unravel_index(np.arange(self.num_experts), self.split), axis=-1)
        width = (hi - lo) / s
        return jnp.asarray(lo + idx * width), jnp.asarray(lo + (idx + 1) * width)

    def expert_of(self, points):
        """Expert index ``(...)`` of points ``(..., d)``; points on an inner face go to the upper
        box, points outside the domain raise no error and are clipped to the nearest box."""
        points = jnp.asarray(points)
        if points.shape[-1] != len(self.split):
            raise ValueError(f"Subdomains.expert_of: points have {points.shape[-1]} coordinates, "
                             f"the domain has {len(self.split)} (split={self.split})")
        lo, hi, s = (jnp.asarray(a, points.dtype) for a in (self.lower, self.upper, self.split))
        cell = jnp.clip(jnp.floor((points - lo) / (hi - lo) * s), 0, s - 1).astype(jnp.int32)
        return jnp.ravel_multi_index(tuple(jnp.moveaxis(cell, -1, 0)), self.split, mode="clip")

    def combine(self, points, phi, weights):
        """``u`` at ``points`` ``(P, d)`` from basis values ``phi`` ``(P, N)`` and the experts'
        ``weights`` ``(K, N)``, each point taking its own expert's weights (:func:`mixture`)."""
        weights = jnp.asarray(weights)
        if weights.ndim != 2 or weights.shape[0] != self.num_experts:
            raise ValueError(f"Subdomains.combine: weights has shape {weights.shape}, expected "
                             f"({self.num_experts}, N) for split={self.split}; solve with data "
                             "stacked over this split's experts")
        return mixture(phi, weights, self.expert_of(points))

    def sample(self, key, num_points, dtype=None):
        """``(K, num_points, d)`` points uniform in each expert's box."""
        lo, hi = self.boxes()
        dtype = dtype or lo.dtype
        u = jax.random.uniform(key, (self.num_experts, num_points, len(self.split)), dtype)
        return lo[:, None].astype(dtype) + u * (hi - lo)[:, None].astype(dtype)


def split_domain(lower: Sequence[float], upper: Sequence[float], split: Sequence[int]) -> Subdomains:
    """The ``Subdomains`` of the box ``[lower, upper]`` split ``split[i]`` times along axis ``i``."""
    lower, upper, split = tuple(lower), tuple(upper), tuple(split)
    if not (len(lower) == len(upper) == len(split)) or not split:
        raise ValueError(f"split_domain: lower {lower}, upper {upper} and split {split} need one "
                         "entry per coordinate")
    for s in split:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"split_domain(split={split}): each entry is a number of pieces >= 1")
    if not all(np.isfinite(a) and np.isfinite(b) and a < b for a, b in zip(lower, upper)):
        raise ValueError(f"split_domain: need finite lower < upper on every axis; got {lower}, {upper}")
    return Subdomains(tuple(float(a) for a in lower), tuple(float(b) for b in upper),
                      tuple(int(s) for s in split))


def mixture(phi, weights, expert):
    """``u_i = sum_j phi[i, j] * weights[expert[i], j]``: each point's value from its expert.

    ``phi`` ``(P, N)`` basis values, ``weights`` ``(K, N)`` (``ExpertSolution.weights``),
    ``expert`` ``(P,)`` indices (``Subdomains.expert_of``)."""
    phi, weights, expert = jnp.asarray(phi), jnp.asarray(weights), jnp.asarray(expert)
    if phi.ndim != 2 or weights.ndim != 2 or phi.shape[1] != weights.shape[1]:
        raise ValueError(f"mixture: phi (P, N) and weights (K, N) must share N; got {phi.shape} "
                         f"and {weights.shape}")
    if expert.shape != phi.shape[:1]:
        raise ValueError(f"mixture: expert must give one index per point, shape ({phi.shape[0]},); "
                         f"got {expert.shape}")
    if not isinstance(expert, jax.core.Tracer) and expert.size and (
            int(expert.min()) < 0 or int(expert.max()) >= weights.shape[0]):
        raise ValueError(f"mixture: expert indices span [{int(expert.min())}, {int(expert.max())}] "
                         f"but weights has {weights.shape[0]} experts; the weights and the "
                         "Subdomains that assigned the points must come from the same split")
    return jnp.einsum("pn,pn->p", phi, weights[expert])
