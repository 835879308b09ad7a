"""Matrix-free linear solvers for implicit differentiation (private; re-exported by implicit).

Every solver solves ``(A + ridge * I) x = b`` where ``A`` is given only as a linear function
``matvec`` over pytrees (``x`` and ``b`` have the same structure). The configuration objects are
small frozen (hashable) dataclasses; they are static arguments of the transformations that use
them, so a solver is chosen by passing an object, never a string.

Calling a configuration object solves eagerly and returns ``(x, SolveInfo)``::

    x, info = CG(tol=1e-8)(matvec, b)
    check(info)          # raises LinearSolveError if the solve did not converge

Inside :func:`jax.lax.custom_linear_solve` (that is, inside the implicit derivative rules) the
check runs through :func:`jax.debug.callback`, because no concrete value exists there; under
``vmap`` it runs once per vmap level on the whole batch (:func:`batch_callback`), not once per
element. Outside
``jit`` it raises :class:`LinearSolveError` directly; under ``jit`` the same error comes back
wrapped in ``jax.errors.JaxRuntimeError`` whose text contains the message.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.sparse import linalg as jsp_linalg

__all__ = [
    "CG", "NormalCG", "GMRES", "BiCGSTAB", "SolveInfo", "LinearSolveError", "check",
    "cg", "normal_cg", "gmres", "bicgstab", "batch_callback",
]

# The true residual is checked against the requested tolerance times this slack: the Krylov
# solvers stop on a recursively updated residual that drifts from the true one by round-off.
_SLACK = 10.0


class LinearSolveError(FloatingPointError):
    """A linear solve inside an implicit derivative did not reach its tolerance."""


class SolveInfo(NamedTuple):
    """What a solve achieved: ``converged`` iff ``residual <= threshold`` (all finite).

    ``residual`` is ``||b - (A + ridge I) x||`` (true residual, recomputed), ``threshold`` is
    ``slack * max(tol * ||b||, atol)`` with ``slack = 10`` to absorb round-off.
    """

    residual: jax.Array
    threshold: jax.Array
    converged: jax.Array


def _tree_vdot(a, b):
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda u, v: jnp.vdot(u, v), a, b))
    return sum(leaves, jnp.zeros((), jnp.result_type(*leaves)))


def _tree_norm(a):
    return jnp.sqrt(jnp.real(_tree_vdot(a, a)))


def _message(name: str, residual, threshold, cfg) -> str:
    residual, threshold = np.asarray(residual), np.asarray(threshold)
    singular = not np.all(np.isfinite(residual))
    why = ("the residual is not finite, so the matrix is singular or indefinite for this "
           "solver" if singular else "the iteration cap was reached before the tolerance")
    where = ":"
    if residual.size > 1:  # a vmapped solve: say how many elements failed and the worst one
        residual, threshold = np.broadcast_arrays(residual, threshold)
        bad = ~(np.isfinite(residual) & (residual <= threshold))
        gap = np.where(np.isfinite(residual), residual - threshold, np.inf)
        worst = np.unravel_index(int(np.argmax(np.where(bad, gap, -np.inf))), residual.shape)
        where = (f" in {int(bad.sum())} of {residual.size} batch elements (vmap); worst at index "
                 f"{tuple(int(i) for i in worst)}:")
        residual, threshold = residual[worst], threshold[worst]
    return (
        f"{name} did not converge{where} residual ||b - A x|| = {residual} exceeds "
        f"{_SLACK:g} * max(tol * ||b||, atol) = {threshold} (tol={cfg.tol}, atol={cfg.atol}, "
        f"maxiter={cfg.maxiter}, ridge={cfg.ridge}); {why}. Fix: raise `maxiter`, loosen `tol`, "
        f"add a `ridge` > 0 (solves (A + ridge I) x = b, regularizing a singular A), or use a "
        f"solver suited to A (CG needs A symmetric definite; GMRES/BiCGSTAB/NormalCG do not). "
        f"Pass check=False in the solver config to skip this check."
    )


def batch_callback(fn, *args) -> None:
    """``jax.debug.callback(fn, *args)`` whose cost does not grow with ``vmap``'s batch.

    JAX's own batching rule for ``debug.callback`` unrolls it: one callback per batch element
    in the staged program, so compile time grows linearly with the batch (a vmap over 4000
    keys took minutes to compile). Here a :func:`jax.custom_batching.custom_vmap` rule calls
    ``fn`` once per vmap level with the whole batch (arrays gain a leading axis), so ``fn``
    must accept batched arrays. Arguments are ``stop_gradient``-ed: the check only reads values.
    """
    args = [jax.lax.stop_gradient(jnp.asarray(a)) for a in args]

    @jax.custom_batching.custom_vmap
    def report(*xs):
        jax.debug.callback(fn, *xs)
        return xs[0]

    @report.def_vmap
    def _report_vmap(axis_size, in_batched, *xs):
        xs = [x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))
              for x, b in zip(xs, in_batched)]
        return report(*xs), True

    report(*args)


def check(info: SolveInfo, cfg: "_Solver | None" = None, name: str = "linear solve") -> None:
    """Raise :class:`LinearSolveError` if ``info`` (concrete values) reports non-convergence."""
    converged = np.asarray(info.converged)
    if not np.all(converged):
        cfg = cfg if cfg is not None else CG()
        raise LinearSolveError(_message(name, np.asarray(info.residual),
                                        np.asarray(info.threshold), cfg))


@dataclasses.dataclass(frozen=True)
class _Solver:
    tol: float = 1e-6
    atol: float = 0.0
    maxiter: int = 100
    ridge: float = 0.0
    check: bool = True

    symmetric = False  # whether the solver requires (and exploits) a symmetric operator

    def __post_init__(self):
        if not (self.tol >= 0 and self.atol >= 0 and self.ridge >= 0):
            raise ValueError(f"{type(self).__name__}: tol, atol and ridge must be >= 0, "
                             f"got tol={self.tol}, atol={self.atol}, ridge={self.ridge}.")
        if int(self.maxiter) < 1:
            raise ValueError(f"{type(self).__name__}: maxiter must be >= 1, got {self.maxiter}.")

    def _regularized(self, matvec):
        if self.ridge == 0.0:
            return matvec
        return lambda v: jax.tree_util.tree_map(lambda a, u: a + self.ridge * u, matvec(v), v)

    def _solve(self, matvec, b, x0):
        raise NotImplementedError

    def _info(self, matvec, b, x) -> SolveInfo:
        r = jax.tree_util.tree_map(jnp.subtract, b, self._regularized(matvec)(x))
        res = _tree_norm(r)
        thr = _SLACK * jnp.maximum(self.tol * _tree_norm(b), self.atol)
        return SolveInfo(res, thr, jnp.isfinite(res) & (res <= thr))

    def __call__(self, matvec: Callable, b: Any, x0: Any = None):
        """Solve ``(A + ridge I) x = b``; return ``(x, SolveInfo)`` without raising."""
        x = self._solve(matvec, b, x0)
        return x, self._info(matvec, b, x)

    def solve_checked(self, matvec: Callable, b: Any) -> Any:
        """Solve and, if ``check``, raise on non-convergence (also under jit, via a callback)."""
        x, info = self(matvec, b)
        if self.check:
            name = type(self).__name__

            def _cb(res, thr, ok):
                check(SolveInfo(res, thr, ok), self, name)

            batch_callback(_cb, *info)
        return x


@dataclasses.dataclass(frozen=True)
class CG(_Solver):
    """Conjugate gradient. Requires ``A`` symmetric and definite (e.g. a Hessian at a strict
    minimum); converges in at most ``dim`` steps in exact arithmetic."""

    symmetric = True

    def _solve(self, matvec, b, x0):
        x, _ = jsp_linalg.cg(self._regularized(matvec), b, x0=x0, tol=self.tol, atol=self.atol,
                             maxiter=self.maxiter)
        return x


@dataclasses.dataclass(frozen=True)
class NormalCG(_Solver):
    """CG on the normal equations ``(A^T A + ridge I) x = A^T b``: any square ``A`` of full rank,
    at the price of squaring the condition number. ``A^T`` comes from ``jax.linear_transpose``.
    The residual checked is that of the normal equations."""

    def _normal(self, matvec, b):
        mt = jax.linear_transpose(matvec, b)

        def normal_matvec(v):
            return mt(matvec(v))[0]

        return normal_matvec, mt(b)[0]

    def _solve(self, matvec, b, x0):
        nmv, nb = self._normal(matvec, b)
        x, _ = jsp_linalg.cg(self._regularized(nmv), nb, x0=x0, tol=self.tol, atol=self.atol,
                             maxiter=self.maxiter)
        return x

    def _info(self, matvec, b, x):
        nmv, nb = self._normal(matvec, b)
        return _Solver._info(self, nmv, nb, x)


@dataclasses.dataclass(frozen=True)
class GMRES(_Solver):
    """Restarted GMRES for any nonsingular ``A``. ``maxiter`` counts restarts, each building a
    Krylov space of dimension ``restart`` (so at most ``maxiter * restart`` matvecs)."""

    restart: int = 20

    def _solve(self, matvec, b, x0):
        x, _ = jsp_linalg.gmres(self._regularized(matvec), b, x0=x0, tol=self.tol, atol=self.atol,
                                restart=self.restart, maxiter=self.maxiter)
        return x


@dataclasses.dataclass(frozen=True)
class BiCGSTAB(_Solver):
    """Stabilized biconjugate gradient for any nonsingular ``A``; short recurrences (cheap
    memory), irregular convergence."""

    def _solve(self, matvec, b, x0):
        x, _ = jsp_linalg.bicgstab(self._regularized(matvec), b, x0=x0, tol=self.tol,
                                   atol=self.atol, maxiter=self.maxiter)
        return x


def cg(matvec, b, x0=None, **config):
    """``CG(**config)(matvec, b, x0) -> (x, SolveInfo)``."""
    return CG(**config)(matvec, b, x0)


def normal_cg(matvec, b, x0=None, **config):
    """``NormalCG(**config)(matvec, b, x0) -> (x, SolveInfo)``."""
    return NormalCG(**config)(matvec, b, x0)


def gmres(matvec, b, x0=None, **config):
    """``GMRES(**config)(matvec, b, x0) -> (x, SolveInfo)``."""
    return GMRES(**config)(matvec, b, x0)


def bicgstab(matvec, b, x0=None, **config):
    """``BiCGSTAB(**config)(matvec, b, x0) -> (x, SolveInfo)``."""
    return BiCGSTAB(**config)(matvec, b, x0)
