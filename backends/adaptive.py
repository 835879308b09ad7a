"""AdaGrad-Norm, AdAdaGrad's adaptive batch sizes, and batch-size-aware learning rates.

- :func:`adagrad_norm` (Ward, Wu & Bottou 2019; the update of AdAdaGradNorm): one scalar
  accumulator for the whole parameter vector, ``b_k^2 = b_{k-1}^2 + ||g_k||^2`` and
  ``theta_k = theta_{k-1} - lr * g_k / b_k``; ``b_0^2 = initial_accumulator_value``.
- Tests that pick the next batch size from per-example gradients ``g_i`` (Lau et al. 2024,
  "AdAdaGrad"), with ``gbar`` their mean and variances unbiased (``ddof=1``) over the batch:

  - :func:`norm_test`: ``b >= ||Var_i g_i||_1 / (eta^2 ||gbar||^2)``;
  - :func:`inner_product_test`: ``b >= Var_i <g_i, gbar> / (theta^2 ||gbar||^4)``;
  - :func:`orthogonality_test`: ``b >= sum_j Var_i (g_i - <g_i, gbar> gbar / ||gbar||^2)_j /
    (nu^2 ||gbar||^2)``; the augmented inner-product test is the larger of the last two.

  Each returns the batch size the test asks for (a float). :class:`AdaptiveBatch` turns that into
  ``fit``'s adaptive-batch mode: ``fit(..., batch_size=AdaptiveBatch(test="norm", eta=0.1,
  initial=16, maximum=1024))``. The batch size never decreases (``b_{k+1} = max(b_k,
  ceil(required))``, capped at ``maximum``) and is rounded up to a bucket ``initial * 2^j`` (or
  ``maximum``), so ``fit`` compiles one chunk function per bucket.
- Batch-size-aware learning rates (Granziol et al. 2022, "Learning Rates as a Function of Batch
  Size"): ``lr(B) = lr(B0) * (B / B0)`` for SGD ("linear") and ``* sqrt(B / B0)`` for Adam-type
  methods ("sqrt"). :func:`batch_scaled_learning_rate` scales a number or an optax schedule for
  a fixed batch size; :func:`scale_by_batch_size` is an optax transformation that reads the
  current batch size from the ``batch_size`` extra argument ``fit`` passes in adaptive mode.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["adagrad_norm", "scale_by_adagrad_norm", "AdaGradNormState", "norm_test", "inner_product_test",
           "orthogonality_test", "augmented_inner_product_test", "AdaptiveBatch", "batch_scaled_learning_rate",
           "scale_by_batch_size", "SCALING_RULES"]


def _check_number(where, name, value, *, positive=False, allow_zero=True):
    if (callable(value) and name == "learning_rate") or isinstance(value, jax.core.Tracer):
        return  # a schedule, or a hyperparameter traced by optax.inject_hyperparams under jit
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name}={value!r} must be a number") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and (positive or not allow_zero)):
        raise ValueError(f"{where}: {name}={value!r} must be a finite number {'> 0' if positive else '>= 0'}")


# ---------------------------------------------------------------- AdaGrad-Norm

class AdaGradNormState(NamedTuple):
    sum_of_squares: Any  # b_k^2, a scalar


def scale_by_adagrad_norm(initial_accumulator_value: float = 1e-2, eps: float = 1e-10) -> optax.GradientTransformation:
    """``g / sqrt(b^2 + ||g||^2)`` with one scalar accumulator ``b^2`` for the whole pytree."""
    _check_number("scale_by_adagrad_norm", "initial_accumulator_value", initial_accumulator_value)
    _check_number("scale_by_adagrad_norm", "eps", eps)
    traced = any(isinstance(v, jax.core.Tracer) for v in (initial_accumulator_value, eps))
    if not traced and float(initial_accumulator_value) + float(eps) <= 0:
        raise ValueError("scale_by_adagrad_norm: initial_accumulator_value + eps must be > 0 (the first step "
                         "divides by it when the gradient is zero)")

    def init(params):
        leaves = jax.tree_util.tree_leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        return AdaGradNormState(jnp.asarray(initial_accumulator_value, dtype))

    def update(updates, state, params=None):
        del params
        sq = state.sum_of_squares + optax.tree.norm(updates, squared=True).astype(state.sum_of_squares.dtype)
        scale = 1.0 / (jnp.sqrt(sq) + eps)
        updates = jax.tree_util.tree_map(lambda g: (g * scale).astype(g.dtype), updates)
        return updates, AdaGradNormState(sq)

    return optax.GradientTransformation(init, update)


def adagrad_norm(learning_rate, initial_accumulator_value: float = 1e-2, eps: float = 1e-10) -> optax.GradientTransformation:
    """AdaGrad-Norm: ``theta <- theta - lr * g / b`` with ``b^2 = b_0^2 + sum_k ||g_k||^2``.

    ``learning_rate``: a positive number or an optax schedule. ``initial_accumulator_value``
    is ``b_0^2`` (1e-2 as in AdAdaGrad's reference code). The reference implementation keeps
    one accumulator per weight-matrix row; this is the scalar (norm) version the paper analyses.
    """
    _check_number("adagrad_norm", "learning_rate", learning_rate, positive=True)
    return optax.chain(scale_by_adagrad_norm(initial_accumulator_value, eps),
                       optax.scale_by_learning_rate(learning_rate))


# ---------------------------------------------------------------- batch-size tests

def _stacked(per_example_grads):
    leaves = jax.tree_util.tree_leaves(per_example_grads)
    if not leaves:
        raise ValueError("batch-size test: per_example_grads is empty")
    b = leaves[0].shape[0] if leaves[0].ndim else None
    if b is None or any(x.ndim == 0 or x.shape[0] != b for x in leaves):
        raise ValueError("batch-size test: per_example_grads needs one leading (example) axis on every leaf, "
                         f"got shapes {[x.shape for x in leaves]}")
    if b < 2:
        raise ValueError(f"batch-size test: needs at least 2 per-example gradients for a variance, got {b}")
    return jnp.concatenate([x.reshape(b, -1) for x in leaves], axis=1)


def _norm_stats(G):
    gbar = G.mean(0)
    return gbar, jnp.sum(gbar ** 2)


def norm_test(per_example_grads, eta):
    """The batch size the norm test asks for: ``||Var_i g_i||_1 / (eta^2 ||gbar||^2)``."""
    G = _stacked(per_example_grads)
    gbar, n2 = _norm_stats(G)
    return jnp.sum(jnp.var(G, axis=0, ddof=1)) / (eta ** 2 * n2)


def inner_product_test(per_example_grads, theta):
    """The batch size the inner-product test asks for: ``Var_i <g_i, gbar> / (theta^2 ||gbar||^4)``."""
    G = _stacked(per_example_grads)
    gbar, n2 = _norm_stats(G)
    return jnp.var(G @ gbar, ddof=1) / (theta ** 2 * n2 ** 2)


def orthogonality_test(per_example_grads, nu):
    """The batch size the orthogonality test asks for: the summed variance of the components of
    ``g_i`` orthogonal to ``gbar``, over ``nu^2 ||gbar||^2``."""
    G = _stacked(per_example_grads)
    gbar, n2 = _norm_stats(G)
    ortho = G - jnp.outer(G @ gbar, gbar) / n2
    return jnp.sum(jnp.var(ortho, axis=0, ddof=1)) / (nu ** 2 * n2)


def augmented_inner_product_test(per_example_grads, theta, nu):
    """The augmented inner-product test: the larger of the inner-product and orthogonality tests."""
    return jnp.maximum(inner_product_test(per_example_grads, theta), orthogonality_test(per_example_grads, nu))


_TESTS = {"norm": ("eta",), "inner_product": ("theta",), "augmented": ("theta", "nu")}


@dataclasses.dataclass(frozen=True)
class AdaptiveBatch:
    """``fit``'s adaptive-batch mode: ``fit(..., batch_size=AdaptiveBatch(...))``.

    ``test``: ``"norm"`` (needs ``eta``), ``"inner_product"`` (``theta``) or ``"augmented"``
    (``theta`` and ``nu``). Training starts at ``initial`` examples per step; after each step
    (every ``every`` steps) the test runs on that step's per-example gradients and the next batch
    size becomes ``max(current, bucket(ceil(required)))``, never above ``maximum``. Buckets are
    ``initial * 2^j`` and ``maximum``: at most ``log2(maximum / initial) + 2`` compilations.

    ``fit`` computes per-example gradients as ``jax.grad`` of the loss on one-example batches
    (same step key), so the loss must be a mean of per-example terms for the test to mean what
    it says. The history records the batch size of every step (``FitResult.batch_sizes``) and
    checkpoints resume it exactly.
    """
    test: str = "norm"
    eta: float | None = None
    theta: float | None = None
    nu: float | None = None
    initial: int = 16
    maximum: int = 1024
    every: int = 1

    def __post_init__(self):
        if self.test not in _TESTS:
            raise ValueError(f"AdaptiveBatch: test must be one of {sorted(_TESTS)}, got {self.test!r}")
        for name in ("eta", "theta", "nu"):
            value = getattr(self, name)
            if name in _TESTS[self.test]:
                if value is None:
                    raise ValueError(f"AdaptiveBatch(test={self.test!r}) needs {name}= (a positive number, "
                                     "e.g. 0.1)")
                _check_number("AdaptiveBatch", name, value, positive=True)
            elif value is not None:
                raise ValueError(f"AdaptiveBatch: {name}= is not used by test={self.test!r} (it uses "
                                 f"{', '.join(_TESTS[self.test])})")
        for name in ("initial", "maximum", "every"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"AdaptiveBatch: {name} must be an integer >= 1, got {v!r}")
        if self.initial < 2:
            raise ValueError(f"AdaptiveBatch: initial must be >= 2 (the tests need a variance), got {self.initial}")
        if self.maximum < self.initial:
            raise ValueError(f"AdaptiveBatch: maximum ({self.maximum}) must be >= initial ({self.initial})")

    def buckets(self) -> tuple[int, ...]:
        """Every batch size this controller can choose, ascending."""
        out, b = [], self.initial
        while b < self.maximum:
            out.append(b)
            b *= 2
        return tuple(out) + (self.maximum,)

    def required(self, per_example_grads):
        """The batch size the test asks for (a float; ``inf`` when the mean gradient is 0)."""
        if self.test == "norm":
            r = norm_test(per_example_grads, self.eta)
        elif self.test == "inner_product":
            r = inner_product_test(per_example_grads, self.theta)
        else:
            r = augmented_inner_product_test(per_example_grads, self.theta, self.nu)
        return jnp.where(jnp.isnan(r), jnp.inf, r)

    def next_batch_size(self, per_example_grads, current):
        """``max(current, bucket(ceil(required)))`` capped at ``maximum`` (jit-compatible)."""
        r = self.required(per_example_grads)
        sizes = jnp.asarray(self.buckets(), jnp.int32)
        r = jnp.minimum(jnp.ceil(r), float(self.maximum))
        bucket = sizes[jnp.minimum(jnp.searchsorted(sizes, r.astype(jnp.float32), side="left"), len(sizes) - 1)]
        return jnp.maximum(jnp.asarray(current, jnp.int32), bucket)


# ---------------------------------------------------------------- learning rate vs batch size

SCALING_RULES = {"linear": lambda ratio: ratio, "sqrt": jnp.sqrt}


def _rule(rule, where):
    if rule not in SCALING_RULES:
        raise ValueError(f"{where}: rule must be 'linear' (SGD) or 'sqrt' (Adam-type), got {rule!r}")
    return SCALING_RULES[rule]


def batch_scaled_learning_rate(learning_rate, batch_size, *, base_batch_size, rule):
    """``learning_rate`` (tuned at ``base_batch_size``) scaled to ``batch_size``: times
    ``B / B0`` (``rule="linear"``, SGD) or ``sqrt(B / B0)`` (``rule="sqrt"``, Adam). A number
    gives a number; an optax schedule gives a schedule."""
    f = _rule(rule, "batch_scaled_learning_rate")
    _check_number("batch_scaled_learning_rate", "learning_rate", learning_rate, positive=True)
    _check_number("batch_scaled_learning_rate", "batch_size", batch_size, positive=True)
    _check_number("batch_scaled_learning_rate", "base_batch_size", base_batch_size, positive=True)
    del f
    factor = math.sqrt(batch_size / base_batch_size) if rule == "sqrt" else batch_size / base_batch_size
    if callable(learning_rate):
        return lambda count: learning_rate(count) * factor
    return float(learning_rate) * factor


def scale_by_batch_size(*, base_batch_size, rule) -> optax.GradientTransformationExtraArgs:
    """Multiply updates by ``B / B0`` or ``sqrt(B / B0)``, ``B`` the ``batch_size`` extra argument.

    Chain it after an optimizer tuned at ``base_batch_size``: ``optax.chain(optax.adam(1e-3),
    scale_by_batch_size(base_batch_size=32, rule="sqrt"))``; ``fit`` passes ``batch_size=`` to
    the optimizer in adaptive-batch mode. Without the argument it raises a ValueError.
    """
    f = _rule(rule, "scale_by_batch_size")
    _check_number("scale_by_batch_size", "base_batch_size", base_batch_size, positive=True)

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None, *, batch_size=None, **extra):
        if batch_size is None:
            raise ValueError("scale_by_batch_size: the optimizer's update needs batch_size= (fit passes it with "
                             "batch_size=AdaptiveBatch(...); call update(..., batch_size=B) yourself otherwise)")
        factor = f(jnp.asarray(batch_size, jnp.float32) / base_batch_size)
        return jax.tree_util.tree_map(lambda u: (u * factor).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)
