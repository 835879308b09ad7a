"""Training diagnostics: curvature of the loss (Hessian top eigenvalue, trace, spectral density),
the linear-stability check of SGD and GD, and the neural-collapse NC1 metric.

Every curvature function takes ``f(params) -> scalar`` (``params`` any pytree of float arrays;
close over the data, e.g. ``lambda p: loss(p, batch)``) and works only through
Hessian-vector products (forward-over-reverse ``jax.jvp`` of ``jax.grad``), so it never forms
the Hessian. They are jit-compatible; randomness comes from an explicit ``key``.

- :func:`hvp` ``H v``.
- :func:`hessian_top_eigenvalue`: power iteration. It converges to the eigenvalue of largest
  **magnitude** (with its sign); at a minimum that is ``lambda_max``.
- :func:`hessian_trace`: Hutchinson, ``tr H = E[z^T H z]`` for Rademacher ``z``; returns the
  estimate and its standard error.
- :func:`hessian_spectrum`: stochastic Lanczos quadrature (SLQ). ``k`` Lanczos steps (full
  reorthogonalization) from each of ``l`` normalized Rademacher probes give Ritz values
  ``theta_i`` and weights ``tau_i^2`` (squared first components of the tridiagonal's
  eigenvectors); the spectral density ``(1/d) sum_j delta(lambda - lambda_j)`` is approximated
  by ``(1/l) sum_probes sum_i tau_i^2 delta(lambda - theta_i)``. Gauss quadrature makes each
  probe's moments ``sum_i tau_i^2 theta_i^p`` equal ``v^T H^p v`` exactly for ``p <= 2k - 1``,
  and ``E[v^T H^p v] = tr(H^p) / d``.
- :func:`linear_stability`: "The Implicit Regularization of Dynamical Stability in SGD" (Wu &
  Su, 2023): a minimum is linearly stable for GD with learning rate ``eta`` only if
  ``lambda_max * eta / 2 <= 1``; for SGD it must also satisfy the trace condition
  ``tr(H) * eta / 2 <= 1``. Both ratios are reported.
- :class:`CurvatureMonitor`: a ``fit`` callback that runs :func:`linear_stability` after a
  chunk and keeps (and optionally prints) the reports.
- :func:`nc1`: within-class variability collapse, ``(1/C) tr(Sigma_W Sigma_B^+)`` of
  penultimate features (Papyan, Han & Donoho 2020; used by "Perturbation Analysis of Neural
  Collapse").
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._lanczos import lanczos

__all__ = ["hvp", "hessian_top_eigenvalue", "hessian_trace", "hessian_spectrum", "SpectralDensity",
           "EigenEstimate", "TraceEstimate", "StabilityReport", "linear_stability", "CurvatureMonitor",
           "nc1"]


def _flat(f, params):
    x, unravel = ravel_pytree(params)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"diagnostics: params must be floating point arrays, got dtype {x.dtype}")
    return (lambda v: f(unravel(v))), x, unravel


def _hvp_flat(g, x):
    grad = jax.grad(g)
    return lambda v: jax.jvp(grad, (x,), (v,))[1]


def _check_positive_int(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"diagnostics: {name} must be an integer >= 1, got {value!r}")


def hvp(f: Callable, params, v):
    """The Hessian-vector product ``H v`` of ``f`` at ``params`` (``v`` shaped like ``params``)."""
    return jax.jvp(jax.grad(f), (params,), (v,))[1]


class EigenEstimate(NamedTuple):
    value: Any      # the Rayleigh quotient v^T H v at the last iterate
    vector: Any     # unit-norm eigenvector estimate, shaped like params
    residual: Any   # ||H v - value * v||: small when converged


def hessian_top_eigenvalue(f: Callable, params, *, key, num_iters: int = 100) -> EigenEstimate:
    """Power iteration on ``H`` with Hessian-vector products (``num_iters`` of them).

    Converges to the eigenvalue of largest magnitude at rate ``|lambda_2 / lambda_1|`` per
    iteration; ``residual`` says how far from an eigenpair the result is.
    """
    _check_positive_int("num_iters", num_iters)
    g, x, unravel = _flat(f, params)
    H = _hvp_flat(g, x)
    v = jax.random.normal(key, x.shape, x.dtype)
    v = v / jnp.linalg.norm(v)

    def body(_, v):
        w = H(v)
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(x.dtype).tiny)

    v = jax.lax.fori_loop(0, num_iters, body, v)
    w = H(v)
    value = jnp.vdot(v, w)
    return EigenEstimate(value, unravel(v), jnp.linalg.norm(w - value * v))


class TraceEstimate(NamedTuple):
    value: Any    # the Hutchinson estimate of tr H
    stderr: Any   # its Monte Carlo standard error


def hessian_trace(f: Callable, params, *, key, num_samples: int = 100) -> TraceEstimate:
    """Hutchinson's estimate of ``tr H``: the mean of ``z^T H z`` over Rademacher ``z``."""
    _check_positive_int("num_samples", num_samples)
    g, x, _ = _flat(f, params)
    H = _hvp_flat(g, x)
    z = jax.random.rademacher(key, (num_samples,) + x.shape, x.dtype)
    quad = jax.lax.map(lambda zi: jnp.vdot(zi, H(zi)), z)
    err = jnp.std(quad, ddof=1) / jnp.sqrt(num_samples) if num_samples > 1 else jnp.full((), jnp.inf, x.dtype)
    return TraceEstimate(jnp.mean(quad), err)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpectralDensity:
    """SLQ's quadrature: ``nodes[p, i]`` (Ritz values) and ``weights[p, i]`` per probe ``p``.

    Each probe's weights sum to 1; the density is their average over probes.
    """
    nodes: Any
    weights: Any
    dim: int = dataclasses.field(metadata=dict(static=True))

    def moment(self, p: int):
        """``tr(H^p) / d`` estimated: mean over probes of ``sum_i tau_i^2 theta_i^p``
        (exact per probe for ``p <= 2k - 1``)."""
        return jnp.mean(jnp.sum(self.weights * self.nodes ** p, axis=-1))

    def trace(self):
        """``d`` times the first moment: an estimate of ``tr H``."""
        return self.dim * self.moment(1)

    def lambda_max(self):
        """The largest Ritz value over the probes (a lower bound on ``lambda_max``)."""
        return jnp.max(self.nodes)

    def lambda_min(self):
        """The smallest Ritz value over the probes (an upper bound on ``lambda_min``)."""
        return jnp.min(self.nodes)

    def density(self, grid, bandwidth):
        """The density smoothed with a Gaussian of standard deviation ``bandwidth`` on ``grid``."""
        grid = jnp.asarray(grid)[:, None, None]
        k = jnp.exp(-0.5 * ((grid - self.nodes) / bandwidth) ** 2) / (bandwidth * jnp.sqrt(2 * jnp.pi))
        return jnp.mean(jnp.sum(self.weights * k, axis=-1), axis=-1)


def hessian_spectrum(f: Callable, params, *, key, num_lanczos: int = 30, num_probes: int = 8) -> SpectralDensity:
    """Stochastic Lanczos quadrature of the Hessian of ``f`` (see the module docstring).

    ``num_lanczos`` (``k``) must not exceed the number of parameters ``d``. Cost:
    ``num_probes * num_lanczos`` Hessian-vector products and ``O(k^2 d)`` reorthogonalization.
    """
    _check_positive_int("num_lanczos", num_lanczos)
    _check_positive_int("num_probes", num_probes)
    g, x, _ = _flat(f, params)
    d = x.shape[0]
    if num_lanczos > d:
        raise ValueError(f"hessian_spectrum: num_lanczos={num_lanczos} exceeds the number of parameters {d}; "
                         f"use num_lanczos <= {d}")
    H = _hvp_flat(g, x)

    def one(k_):
        z = jax.random.rademacher(k_, x.shape, x.dtype) / jnp.sqrt(jnp.asarray(d, x.dtype))
        a, b, _ = lanczos(H, z, num_lanczos)
        T = jnp.diag(a) + jnp.diag(b, 1) + jnp.diag(b, -1)
        theta, U = jnp.linalg.eigh(T)
        return theta, U[0] ** 2

    nodes, weights = jax.lax.map(one, jax.random.split(key, num_probes))
    return SpectralDensity(nodes, weights, d)


class StabilityReport(NamedTuple):
    lambda_max: Any     # top Hessian eigenvalue (power iteration)
    trace: Any          # Hutchinson estimate of tr H
    trace_stderr: Any
    gd_ratio: Any       # lambda_max * lr / 2: GD's minimum is linearly stable only if <= 1
    sgd_ratio: Any      # tr(H) * lr / 2: SGD's minimum is linearly stable only if <= 1

    @property
    def gd_stable(self):
        return self.gd_ratio <= 1

    @property
    def sgd_stable(self):
        return self.sgd_ratio <= 1


def linear_stability(f: Callable, params, learning_rate, *, key, num_iters: int = 100,
                     num_samples: int = 100) -> StabilityReport:
    """The two stability conditions of Wu & Su (2023) at ``params`` for step size ``learning_rate``.

    GD: ``lambda_max(H) * lr / 2 <= 1``. SGD (at a global minimum of an interpolating model):
    ``tr(H) * lr / 2 <= 1``, a stricter condition since ``tr H >= lambda_max`` for a positive
    semi-definite Hessian. Both are necessary conditions for linear stability, meaningful near a
    minimum; elsewhere the ratios describe the local curvature only.
    """
    lr = float(learning_rate)
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"linear_stability: learning_rate must be a positive finite number, got {learning_rate!r}")
    k1, k2 = jax.random.split(key)
    top = hessian_top_eigenvalue(f, params, key=k1, num_iters=num_iters)
    tr = hessian_trace(f, params, key=k2, num_samples=num_samples)
    return StabilityReport(top.value, tr.value, tr.stderr, top.value * lr / 2, tr.value * lr / 2)


class CurvatureMonitor:
    """A ``fit`` callback: after every ``every``-th chunk, :func:`linear_stability` of
    ``objective(params)`` at the current parameters, kept in ``self.records``.

    ``objective(params) -> scalar`` is deterministic (e.g. the full-batch or a fixed-minibatch
    loss); ``learning_rate`` is the step size the stability ratios refer to. ``log`` (e.g.
    ``print``) receives one line per report. Each report uses ``fold_in(key, step)``.

    >>> mon = CurvatureMonitor(lambda p: full_loss(p), learning_rate=0.1, key=jax.random.key(0))
    >>> fit(loss, optax.sgd(0.1), params, ..., callbacks=[mon])   # doctest: +SKIP
    >>> mon.records[-1]["gd_ratio"]                                # doctest: +SKIP
    """

    def __init__(self, objective: Callable, *, learning_rate, key, every: int = 1, num_iters: int = 50,
                 num_samples: int = 50, log: Callable | None = None):
        _check_positive_int("every", every)
        _check_positive_int("num_iters", num_iters)
        _check_positive_int("num_samples", num_samples)
        lr = float(learning_rate)
        if not np.isfinite(lr) or lr <= 0:
            raise ValueError(f"CurvatureMonitor: learning_rate must be a positive finite number, got {learning_rate!r}")
        self.learning_rate, self.key, self.every, self.log = lr, key, every, log
        self.records: list[dict] = []
        self._calls = 0
        self._report = jax.jit(lambda p, k: linear_stability(objective, p, lr, key=k, num_iters=num_iters,
                                                            num_samples=num_samples))

    def __call__(self, step, state, losses):
        self._calls += 1
        if self._calls % self.every:
            return
        r = self._report(state.params, jax.random.fold_in(self.key, step))
        rec = {"step": int(step), **{k: float(v) for k, v in r._asdict().items()},
               "gd_stable": bool(r.gd_stable), "sgd_stable": bool(r.sgd_stable)}
        self.records.append(rec)
        if self.log is not None:
            self.log(f"step {rec['step']}: lambda_max {rec['lambda_max']:.4g} (lr*lambda_max/2 = "
                     f"{rec['gd_ratio']:.3g}, GD {'stable' if rec['gd_stable'] else 'UNSTABLE'}), trace "
                     f"{rec['trace']:.4g} +- {rec['trace_stderr']:.2g} (lr*tr/2 = {rec['sgd_ratio']:.3g}, "
                     f"SGD {'stable' if rec['sgd_stable'] else 'UNSTABLE'})")


def nc1(features, labels, num_classes: int):
    """Neural collapse NC1: ``(1/C) tr(Sigma_W Sigma_B^+)``.

    ``features``: ``(N, p)`` penultimate features; ``labels``: ``(N,)`` integers in
    ``[0, num_classes)``, every class present. ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})
    (h_i - mu_{y_i})^T``; ``Sigma_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T`` with ``mu_G``
    the mean of the class means; ``+`` is the Moore-Penrose pseudo-inverse. It falls to 0 as
    features collapse to their class means.
    """
    features = jnp.asarray(features)
    labels = jnp.asarray(labels)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"nc1: features must be (N, p) and labels (N,), got {features.shape} and {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"nc1: labels must be integers, got dtype {labels.dtype}")
    _check_positive_int("num_classes", num_classes)
    if not isinstance(labels, jax.core.Tracer):
        present = np.unique(np.asarray(labels))
        if present.min() < 0 or present.max() >= num_classes or present.size != num_classes:
            raise ValueError(f"nc1: labels must cover every class 0..{num_classes - 1} and nothing else; "
                             f"got classes {present.tolist()}")
    onehot = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)
    counts = onehot.sum(0)
    means = (onehot.T @ features) / counts[:, None]
    centered = features - means[labels]
    sigma_w = centered.T @ centered / features.shape[0]
    between = means - means.mean(0)
    sigma_b = between.T @ between / num_classes
    return jnp.trace(sigma_w @ jnp.linalg.pinv(sigma_b, hermitian=True)) / num_classes
