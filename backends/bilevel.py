"""BO-REP: bilevel optimization under unbounded smoothness (Hao, Gong & Liu, ICLR 2024).

The problem is ``min_x F(x) = f(x, y*(x))`` with ``y*(x) = argmin_y g(x, y)``, ``g`` strongly
convex in ``y``. Both functions take an explicit PRNG key, ``f(x, y, key)`` and
``g(x, y, key)``, so that they may draw minibatches (a deterministic problem ignores it); ``x``
and ``y`` are pytrees of float arrays. The hypergradient is

    grad F(x) = grad_x f(x, y*) - grad_xy g(x, y*) z*,    grad_yy g(x, y*) z* = grad_y f(x, y*).

BO-REP (the paper's Algorithm 1) as a kernel ``(init, step)``:

* **initialization refinement**: ``init`` runs ``refine_steps`` SGD steps on ``g(x_0, .)``;
* **periodic updates**: at every ``period``-th step (``t % period == 0``) ``lower_steps`` SGD
  steps on ``g(x_t, .)`` start from the previous ``y``; otherwise ``y`` is kept;
* the linear system for ``z`` is either the paper's iterate (``solve=None``): one step
  ``z <- z - z_lr (grad_yy g z - grad_y f)`` per outer step, warm-started from the previous
  ``z``; or an exact solve through ppl's implicit differentiation (``solve=implicit.CG(...)``):
  ``y*`` is wrapped by :func:`ppl.transforms.implicit.custom_root` with the optimality condition
  ``grad_y g(x, y) = 0`` at the current ``y`` and ``jax.grad`` of ``f(x, y*(x))`` gives the
  hypergradient;
* **normalized momentum** on the upper level: ``m <- beta m + (1 - beta) h``,
  ``x <- x - upper_lr m / ||m||`` (``normalized_momentum``; any optax transformation may be
  passed as ``upper_optimizer`` instead, e.g. ``optax.sgd`` for a plain-gradient baseline).

Hessian-vector products are forward-over-reverse (``jax.jvp`` of ``jax.grad``); the mixed
product ``grad_xy g z`` is a VJP of ``grad_y g`` with respect to ``x``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl.transforms import implicit

from . import _checks

__all__ = ["BORep", "BORepState", "BORepInfo", "bo_rep", "hypergradient", "normalized_momentum"]


def normalized_momentum(learning_rate: float, momentum: float = 0.9,
                        eps: float = 1e-12) -> optax.GradientTransformation:
    """BO-REP's upper update as optax: ``m <- beta m + (1 - beta) g``, step ``-lr m / ||m||``.

    ``||m||`` is the Euclidean norm over the whole pytree. ``eps`` only guards ``m = 0``.
    """
    _checks.positive("normalized_momentum", learning_rate=learning_rate)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"normalized_momentum: momentum must be in [0, 1), got {momentum}.")
    return optax.chain(optax.ema(momentum, debias=False),
                       optax.normalize_by_update_norm(scale_factor=-learning_rate, eps=eps))


def _count(where: str, name: str, v, minimum: int) -> int:
    if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum):
        raise ValueError(f"{where}: `{name}` must be an integer >= {minimum}, got {v!r}.")
    return int(v)


def _tree_axpy(a, x, y):  # a * x + y
    return jax.tree_util.tree_map(lambda u, v: a * u + v, x, y)


def _grad_y(g, x, y, key):
    return jax.grad(g, argnums=1)(x, y, key)


def _sgd(g, x, y, key, lr, steps):
    """``steps`` SGD steps on ``g(x, .)`` from ``y``, one fresh key per step."""
    if steps == 0:
        return y

    def body(y_, k):
        return _tree_axpy(-lr, _grad_y(g, x, y_, k), y_), None

    return jax.lax.scan(body, y, jax.random.split(key, steps))[0]


def hypergradient(f: Callable, g: Callable, x: Any, y: Any, key: jax.Array, *,
                  solve=implicit.CG(tol=1e-8, maxiter=500)) -> Any:
    """``grad_x f(x, y*(x))`` by ppl's implicit differentiation, taking ``y`` as ``y*(x)``.

    ``y`` is treated as the root of ``grad_y g(x, .) = 0`` (it is not refined), and the linear
    system ``grad_yy g z = grad_y f`` is solved matrix-free by ``solve`` (a config from
    :mod:`ppl.transforms.implicit`; ``CG`` needs ``g`` strictly convex in ``y``). ``f`` and ``g``
    get independent keys split from ``key``.
    """
    kf, kg = jax.random.split(key)

    def F(y_, x_):
        return _grad_y(g, x_, y_, kg)

    y_star = implicit.custom_root(F, solve=solve)(lambda y0, x_: y0)
    return jax.grad(lambda x_: f(x_, y_star(y, x_), kf))(x)


class BORepState(NamedTuple):
    x: Any            # upper variable
    y: Any            # lower variable (the estimate of y*(x))
    z: Any            # the linear-system iterate (zeros and unused with an exact `solve`)
    opt_state: Any    # the upper optimizer's state (normalized momentum's m)
    step: jax.Array   # int32 outer step count t


class BORepInfo(NamedTuple):
    upper_loss: jax.Array      # f(x_t, y_t) on the step's upper key
    hypergrad_norm: jax.Array  # ||h_t||, the hypergradient estimate before momentum
    lower_grad_norm: jax.Array  # ||grad_y g(x_t, y_t)||, how far y_t is from y*(x_t)
    lower_updated: jax.Array   # whether y was updated at this step (t % period == 0)


@dataclasses.dataclass(frozen=True)
class BORep:
    """The BO-REP kernel; build it with :func:`bo_rep`. ``init`` / ``step`` / ``run`` are pure."""

    f: Callable
    g: Callable
    upper_optimizer: optax.GradientTransformation
    lower_lr: float
    period: int
    lower_steps: int
    refine_steps: int
    z_lr: float | None
    solve: Any

    def init(self, key: jax.Array, x0: Any, y0: Any) -> BORepState:
        """Check the inputs and run the initialization refinement (``refine_steps`` SGD steps)."""
        _check_inputs(self.f, self.g, x0, y0, key)
        y = _sgd(self.g, x0, y0, key, self.lower_lr, self.refine_steps)
        z = jax.tree_util.tree_map(jnp.zeros_like, y0)
        return BORepState(x0, y, z, self.upper_optimizer.init(x0), jnp.zeros((), jnp.int32))

    def step(self, key: jax.Array, state: BORepState) -> tuple[BORepState, BORepInfo]:
        """One outer iteration: periodic lower update, hypergradient, upper update."""
        k_low, k_f, k_g, k_hg = jax.random.split(key, 4)
        x, t = state.x, state.step
        update = (t % self.period) == 0
        y = jax.lax.cond(update,
                         lambda y_: _sgd(self.g, x, y_, k_low, self.lower_lr, self.lower_steps),
                         lambda y_: y_, state.y)
        if self.solve is None:  # the paper's iterate for the linear system
            gy = lambda x_, y_: _grad_y(self.g, x_, y_, k_g)
            Hz = jax.jvp(lambda y_: gy(x, y_), (y,), (state.z,))[1]
            fx, fy = jax.grad(self.f, argnums=(0, 1))(x, y, k_f)
            z = jax.tree_util.tree_map(lambda z_, h, b: z_ - self.z_lr * (h - b), state.z, Hz, fy)
            Gxy_z = jax.vjp(lambda x_: gy(x_, y), x)[1](z)[0]
            h = jax.tree_util.tree_map(jnp.subtract, fx, Gxy_z)
        else:
            z = state.z
            h = hypergradient(self.f, self.g, x, y, k_hg, solve=self.solve)
        updates, opt_state = self.upper_optimizer.update(h, state.opt_state, x)
        x_new = optax.apply_updates(x, updates)
        info = BORepInfo(self.f(x, y, k_f), optax.tree.norm(h),
                         optax.tree.norm(_grad_y(self.g, x, y, k_g)), update)
        return BORepState(x_new, y, z, opt_state, t + 1), info

    def run(self, key: jax.Array, x0: Any, y0: Any, num_steps: int):
        """``init`` then ``num_steps`` steps under one ``jit`` (``lax.scan``).

        Returns the final state and a :class:`BORepInfo` whose fields are stacked per step.
        """
        num_steps = _count("BORep.run", "num_steps", num_steps, 1)
        k0, k1 = jax.random.split(key)
        state = self.init(k0, x0, y0)
        return _run(self, k1, state, num_steps)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _run(kernel, key, state, num_steps):
    def body(s, k):
        return kernel.step(k, s)

    return jax.lax.scan(body, state, jax.random.split(key, num_steps))


def _check_inputs(f, g, x0, y0, key) -> None:
    for name, tree in (("x0", x0), ("y0", y0)):
        leaves = jax.tree_util.tree_leaves(tree)
        if not leaves:
            raise ValueError(f"BORep.init: `{name}` has no arrays.")
        for leaf in leaves:
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise TypeError(f"BORep.init: `{name}` must hold float arrays, got dtype "
                                f"{jnp.result_type(leaf)}.")
            try:
                finite = bool(np.all(np.isfinite(np.asarray(leaf))))
            except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
                # traced (init under jit / vmap): the values are not known here
                finite = True
            if not finite:
                raise ValueError(f"BORep.init: `{name}` contains NaN or inf.")
    for name, fn in (("f", f), ("g", g)):
        try:
            out = jax.eval_shape(fn, x0, y0, key)
        except Exception as e:  # noqa: BLE001 - re-raised with the call that failed named
            raise type(e)(f"BORep.init: calling `{name}(x0, y0, key)` failed: {e}") from e
        if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
            raise ValueError(f"BORep.init: `{name}(x, y, key)` must return a float scalar, got "
                             f"{out}. Reduce the per-example losses (e.g. jnp.mean).")


def bo_rep(f: Callable, g: Callable, *, upper_lr: float | None = None, lower_lr: float,
           momentum: float = 0.9, period: int = 1, lower_steps: int = 1,
           refine_steps: int = 0, z_lr: float | None = None, solve=None,
           upper_optimizer: optax.GradientTransformation | None = None) -> BORep:
    """Build the BO-REP kernel for ``min_x f(x, y*(x))``, ``y*(x) = argmin_y g(x, y)``.

    Args:
      f, g: the upper and lower objectives, ``f(x, y, key) -> scalar``.
      upper_lr, momentum: normalized momentum's ``eta`` and ``beta`` (ignored if
        ``upper_optimizer`` is given; then ``upper_lr`` must be None).
      lower_lr: the lower level's SGD step size.
      period, lower_steps: every ``period`` outer steps, ``lower_steps`` SGD steps on ``g``
        (the paper's ``I`` and ``N``).
      refine_steps: the initialization refinement's SGD steps at ``x_0`` (``T_0``).
      z_lr: the step ``nu`` of the paper's linear-system iterate (needed when ``solve`` is None).
      solve: None for the paper's iterate, or an implicit-differentiation solver config
        (``ppl.transforms.implicit.CG(...)``) for an exact solve at every step.
      upper_optimizer: any optax transformation instead of normalized momentum.
    """
    where = "bo_rep"
    if not callable(f) or not callable(g):
        raise TypeError(f"{where}: `f` and `g` must be callables f(x, y, key) -> scalar.")
    _checks.positive(where, lower_lr=lower_lr)
    period = _count(where, "period", period, 1)
    lower_steps = _count(where, "lower_steps", lower_steps, 1)
    refine_steps = _count(where, "refine_steps", refine_steps, 0)
    if upper_optimizer is None:
        if upper_lr is None:
            raise ValueError(f"{where}: give `upper_lr` (normalized momentum's step size) or an "
                             f"`upper_optimizer`.")
        upper_optimizer = normalized_momentum(upper_lr, momentum)
    elif upper_lr is not None:
        raise ValueError(f"{where}: `upper_lr` and `upper_optimizer` both given; the optimizer "
                         f"carries its own learning rate, so drop `upper_lr`.")
    if solve is None:
        if z_lr is None:
            raise ValueError(f"{where}: the paper's linear-system iterate needs `z_lr` (its step "
                             f"nu, below 2 / lambda_max(grad_yy g)); or pass "
                             f"solve=implicit.CG(...) for an exact solve.")
        _checks.positive(where, z_lr=z_lr)
    elif not hasattr(solve, "solve_checked"):
        raise TypeError(f"{where}: `solve` must be None or a solver config such as "
                        f"ppl.transforms.implicit.CG(), got {solve!r}.")
    elif z_lr is not None:
        raise ValueError(f"{where}: `z_lr` is only used by the paper's iterate (solve=None).")
    return BORep(f, g, upper_optimizer, float(lower_lr), period, lower_steps, refine_steps,
                 None if z_lr is None else float(z_lr), solve)
