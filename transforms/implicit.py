"""Implicit differentiation of solutions of inner problems.

A solver ``solver(init_x, *theta) -> x*`` is wrapped with its optimality condition, either the
root form ``F(x, *theta) = 0`` or the fixed-point form ``x = T(x, *theta)``. Derivatives of
``x*(theta)`` then come from the implicit function theorem, never from the solver's iterations::

    F(x*(theta), theta) = 0   =>   (dF/dx) dx* = -(dF/dtheta) dtheta

The derivative is a :func:`jax.custom_jvp`: the tangent rule solves the linear system above with
:func:`jax.lax.custom_linear_solve`, matrix-free (``dF/dx`` only through JVPs of ``F``). Because
``custom_linear_solve`` is transposable, reverse mode (``jax.grad``, ``jax.jacrev``) follows by
JAX's linearize-and-transpose, and forward mode (``jax.jvp``, ``jax.jacfwd``) works directly. The
forward rule is what ADEV needs: an objective program that calls a wrapped solver is
differentiated in forward mode and transposed.

Example (ridge regression; ``w*(lam) = (X^T X + lam I)^{-1} X^T y``)::

    def F(w, lam):                                   # gradient of the inner loss
        return X.T @ (X @ w - y) + lam * w

    @implicit.custom_root(F, solve=implicit.CG(tol=1e-8, maxiter=200))
    def ridge(init_w, lam):
        return any_solver_you_like(init_w, lam)      # never differentiated

    jax.grad(lambda lam: val_loss(ridge(w0, lam)))(1.0)

*Unrolled alternative*: call the undecorated solver under ``jax.grad``/``jax.jvp`` (the solver
must then be differentiable, e.g. a ``lax.fori_loop`` or ``lax.scan``); :func:`unrolled` is
spelled out for readability in comparisons. Unrolling costs memory linear in the iteration
count (reverse mode) and differentiates the iterates, not the solution; implicit
differentiation is exact at the solution and costs one linear solve.

Sharp edges
-----------
* The derivative is only as good as the solution: the theorem holds at an exact root. Pass
  ``root_tol`` to check ``||F(x*, theta)||`` at run time.
* No gradient flows into ``init_x`` (it is wrapped in ``stop_gradient``): at a unique root the
  solution does not depend on where the solver started.
* ``CG`` requires ``dF/dx`` symmetric definite (true when ``F`` is the gradient of a strictly
  convex/concave function). Fixed points default to ``GMRES``, since ``I - dT/dx`` is not
  symmetric in general.
* Non-convergence of the linear solve raises :class:`LinearSolveError` (eagerly) or a
  ``JaxRuntimeError`` containing the same message (under ``jit``), through
  :func:`jax.debug.callback`. We chose a callback over ``checkify`` so that no wrapping of user
  code is needed; set ``check=False`` in the solver config to disable it (then a singular system
  can yield NaN or inf). Under ``vmap`` the check runs once per vmap level on the whole batch
  (JAX's own rule would unroll one callback per element, and compile time would grow with the
  batch); the message says how many elements failed and shows the worst.
* Solver configs are static (hashable frozen dataclasses): changing ``tol`` recompiles.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._linear_solve import (BiCGSTAB, CG, GMRES, LinearSolveError, NormalCG, SolveInfo,
                            batch_callback, bicgstab, cg, check, gmres, normal_cg)

__all__ = [
    "custom_root", "custom_fixed_point", "root_jvp", "unrolled",
    "CG", "NormalCG", "GMRES", "BiCGSTAB", "SolveInfo", "LinearSolveError", "RootError",
    "check", "cg", "normal_cg", "gmres", "bicgstab",
]


class RootError(FloatingPointError):
    """The wrapped solver returned a point that is not a root of its optimality condition."""


def _tree_sub(a, b):
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def _tree_norm(a):
    leaves = [jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree_util.tree_leaves(a)]
    return jnp.sqrt(sum(leaves, jnp.zeros(())))


def _check_root(F, x, args, root_tol, name):
    res = _tree_norm(F(x, *args))

    def _cb(r):
        r = np.asarray(r)
        bad = ~(np.isfinite(r) & (r <= root_tol))
        if np.any(bad):
            where = (f" in {int(bad.sum())} of {r.size} batch elements (vmap), worst "
                     f"{np.max(np.where(np.isfinite(r), r, np.inf))}" if r.size > 1 else f" = {r}")
            raise RootError(
                f"{name}: the solver's output is not a root: ||F(x*, theta)|| > root_tol = "
                f"{root_tol}{where}. Implicit derivatives are only valid at a root. Fix: "
                f"run the inner solver longer or with a tighter tolerance, or loosen root_tol.")

    batch_callback(_cb, res)


def root_jvp(F: Callable, x: Any, args: tuple, dargs: tuple, solve=CG()) -> Any:
    """Tangent of the root ``x`` of ``F(x, *args) = 0`` along ``dargs``.

    Solves ``(dF/dx) dx = -(dF/dargs) dargs`` with ``custom_linear_solve`` (transposable, so this
    function is linear in ``dargs`` and reverse mode works through it).
    """
    _, rhs = jax.jvp(lambda *a: F(x, *a), args, dargs)
    rhs = jax.tree_util.tree_map(jnp.negative, rhs)

    def matvec(v):
        return jax.jvp(lambda x_: F(x_, *args), (x,), (v,))[1]

    def solve_fn(mv, b):
        return solve.solve_checked(mv, b)

    return jax.lax.custom_linear_solve(
        matvec, rhs, solve=solve_fn,
        transpose_solve=None if solve.symmetric else solve_fn,
        symmetric=solve.symmetric)


def custom_root(F: Callable, solve=CG(), *, root_tol: float | None = None):
    """Decorate ``solver(init_x, *theta) -> x`` so that ``x*`` is differentiated implicitly.

    Args:
      F: the optimality condition ``F(x, *theta)``, returning a pytree shaped like ``x``; the
        solver's output is assumed to satisfy ``F(x*, *theta) = 0``.
      solve: linear solver config (``CG``, ``NormalCG``, ``GMRES``, ``BiCGSTAB``) for the system
        ``(dF/dx + ridge I) dx = -(dF/dtheta) dtheta``.
      root_tol: if given, check ``||F(x*, theta)|| <= root_tol`` at run time and raise
        :class:`RootError` otherwise.

    Returns: a decorator; the decorated function has the solver's signature and supports
    ``jax.jvp``, ``jax.grad``, ``jacfwd``, ``jacrev``, ``vmap`` and ``jit``. ``init_x`` gets
    no derivative.
    """
    if not hasattr(solve, "solve_checked"):
        raise TypeError(f"custom_root: `solve` must be a solver config such as implicit.CG(), "
                        f"got {solve!r}.")

    def decorator(solver: Callable) -> Callable:
        name = getattr(solver, "__name__", "solver")

        @jax.custom_jvp
        def _solution(init_x, *args):
            x = solver(init_x, *args)
            if root_tol is not None:
                _check_root(F, x, args, root_tol, name)
            return x

        @_solution.defjvp
        def _solution_jvp(primals, tangents):
            init_x, *args = primals
            _, *dargs = tangents
            x = _solution(init_x, *args)
            return x, root_jvp(F, x, tuple(args), tuple(dargs), solve)

        @functools.wraps(solver)
        def wrapped(init_x, *args):
            return _solution(jax.lax.stop_gradient(init_x), *args)

        return wrapped

    return decorator


def custom_fixed_point(T: Callable, solve=GMRES(), *, root_tol: float | None = None):
    """Like :func:`custom_root` for a fixed-point condition ``x* = T(x*, *theta)``.

    Uses ``F(x, theta) = T(x, theta) - x``, so the linear system is
    ``(I - dT/dx) dx = (dT/dtheta) dtheta``; it is solvable when ``T`` is a contraction near
    ``x*`` (spectral radius of ``dT/dx`` below one).
    """

    def F(x, *args):
        return _tree_sub(T(x, *args), x)

    return custom_root(F, solve=solve, root_tol=root_tol)


def unrolled(solver: Callable) -> Callable:
    """The unrolled alternative: differentiate through the solver's iterations.

    This is the identity on ``solver``; it exists to make comparisons read clearly. The solver
    must be differentiable (``lax.fori_loop`` with static bounds or ``lax.scan``; a
    ``lax.while_loop`` supports forward mode only).
    """
    return solver
