"""Gradient-boosted neural networks (GBNN): a one-hidden-layer network trained stage by stage.

Emami & Martinez-Munoz, "Sequential training of neural networks with gradient boosting". The
network's output layer is an additive expansion, so it can be grown like a boosted ensemble:

1. ``F_0 = argmin_c sum_i L(y_i, c)`` (the mean for squared loss, the log-odds / log class
   frequencies for the logistic / softmax losses).
2. For ``t = 1..T``: pseudo-residuals ``r_i = -dL(y_i, F)/dF`` at ``F_{t-1}``; fit a network
   ``h_t`` with ``J`` hidden units to ``r`` by least squares on a random subsample (L-BFGS);
   take the Newton step ``rho_t`` of ``rho -> sum_i L(y_i, F_{t-1}(x_i) + rho h_t(x_i))`` at 0
   (halved until it does not increase that loss: see :func:`newton_step`);
   ``F_t = F_{t-1} + nu rho_t h_t``.
3. The ``T`` small networks and ``F_0`` are one network with ``T * J`` hidden units
   (:meth:`GBNN.network`): hidden weights stacked, output weights scaled by ``nu rho_t``, output
   bias ``F_0 + sum_t nu rho_t b_t``. Dropping the last stages' units gives the staged model.

The Newton step is computed by autodiff for every loss (``-phi'(0) / phi''(0)``); for squared
loss that is the exact line minimizer ``<r, h> / <h, h>``, where the reference code uses 1. The
halving safeguard is ours: without it, a stage whose network fits the residuals poorly has tiny
curvature along it, takes a huge step and can blow the training loss up (seen on iris).
Everything (all stages, each stage's L-BFGS) runs in one ``jit``-compiled ``lax.scan``.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _checks

__all__ = ["GBNN", "MLPParams", "gbnn_fit", "mlp_apply", "newton_step"]

_LOSSES = ("squared", "logistic", "softmax")
_ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu}


class MLPParams(NamedTuple):
    """A one-hidden-layer network ``act(x @ w1 + b1) @ w2 + b2``."""
    w1: jax.Array  # [d, H]
    b1: jax.Array  # [H]
    w2: jax.Array  # [H, K]
    b2: jax.Array  # [K]


def mlp_apply(params: MLPParams, x, activation: str = "sigmoid"):
    """Raw outputs ``[n, K]`` of a one-hidden-layer network."""
    act = _ACTIVATIONS[activation]
    return act(x @ params.w1 + params.b1) @ params.w2 + params.b2


def _loss_terms(loss, y, f):
    """Per-example loss of raw predictions ``f [n, K]`` against targets ``y [n, K]``."""
    if loss == "squared":
        return 0.5 * jnp.sum((y - f) ** 2, axis=-1)
    if loss == "logistic":  # y in {0, 1}, one logit
        return jnp.sum(jax.nn.softplus(f) - y * f, axis=-1)
    return jax.nn.logsumexp(f, axis=-1) - jnp.sum(y * f, axis=-1)  # softmax, y one-hot


def _intercept(loss, y):
    """``argmin_c sum_i L(y_i, c)`` in closed form."""
    mean = jnp.mean(y, axis=0)
    if loss == "squared":
        return mean
    if loss == "logistic":
        return jnp.log(mean) - jnp.log1p(-mean)
    return jnp.log(mean)  # softmax: log class frequencies (defined up to a constant)


class GBNN(NamedTuple):
    """A trained gradient-boosted network.

    ``w1 [T, d, J]``, ``b1 [T, J]``, ``w2 [T, J, K]``, ``b2 [T, K]`` are the stages' networks,
    ``rho [T]`` their Newton steps (without the shrinkage ``nu``), ``train_loss [T]`` the mean
    training loss after each stage, ``intercept [K]`` is ``F_0``.
    """
    intercept: jax.Array
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array
    rho: jax.Array
    train_loss: jax.Array
    learning_rate: float
    loss: str
    activation: str
    classes: np.ndarray | None

    @property
    def stages(self) -> int:
        return int(self.rho.shape[0])

    def stage_outputs(self, x):
        """Each stage's ``h_t(x)``: ``[T, n, K]``."""
        act = _ACTIVATIONS[self.activation]
        return jax.vmap(lambda w1, b1, w2, b2: act(x @ w1 + b1) @ w2 + b2)(self.w1, self.b1, self.w2, self.b2)

    def decision_function(self, x, stages: int | None = None):
        """``F_t(x)`` (raw outputs ``[n, K]``) using the first ``stages`` stages (all by default)."""
        x = jnp.asarray(x)
        t = self.stages if stages is None else stages
        if not (isinstance(t, int) and 0 <= t <= self.stages):
            raise ValueError(f"GBNN.decision_function(stages={stages!r}): must be an integer in [0, {self.stages}]")
        h = self.stage_outputs(x)[:t]
        steps = self.learning_rate * self.rho[:t]
        return self.intercept + jnp.einsum("t,tnk->nk", steps, h)

    def network(self, stages: int | None = None) -> MLPParams:
        """The first ``stages`` stages merged into one network with ``stages * J`` hidden units."""
        t = self.stages if stages is None else stages
        if not (isinstance(t, int) and 0 <= t <= self.stages):
            raise ValueError(f"GBNN.network(stages={stages!r}): must be an integer in [0, {self.stages}]")
        steps = self.learning_rate * self.rho[:t]
        d, j = self.w1.shape[1], self.w1.shape[2]
        w1 = jnp.transpose(self.w1[:t], (1, 0, 2)).reshape(d, t * j)
        b1 = self.b1[:t].reshape(t * j)
        w2 = (steps[:, None, None] * self.w2[:t]).reshape(t * j, self.w2.shape[2])
        b2 = self.intercept + jnp.einsum("t,tk->k", steps, self.b2[:t])
        return MLPParams(w1, b1, w2, b2)

    def predict_proba(self, x):
        """Class probabilities ``[n, C]`` (classification losses only)."""
        f = self.decision_function(x)
        if self.loss == "logistic":
            p = jax.nn.sigmoid(f[:, 0])
            return jnp.stack([1 - p, p], axis=-1)
        if self.loss == "softmax":
            return jax.nn.softmax(f, axis=-1)
        raise ValueError("GBNN.predict_proba: this model was trained with loss='squared' (a regressor); "
                         "use decision_function or predict")

    def predict(self, x):
        """Predicted labels (classification, in the original label values) or values (regression)."""
        if self.loss == "squared":
            f = self.decision_function(x)
            return f[:, 0] if f.shape[1] == 1 else f
        return np.asarray(self.classes)[np.asarray(jnp.argmax(self.predict_proba(x), axis=-1))]


def _encode_targets(fn, loss, y, n):
    y = np.asarray(y)
    if y.shape[0] != n:
        raise ValueError(f"{fn}: x has {n} rows but y has {y.shape[0]}; they must match")
    if loss == "squared":
        if y.ndim not in (1, 2):
            raise ValueError(f"{fn}: y must be [n] or [n, K] for loss='squared', got shape {y.shape}")
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{fn}: y contains NaN or infinite values")
        return (y[:, None] if y.ndim == 1 else y), None
    if y.ndim != 1:
        raise ValueError(f"{fn}: y must be a vector of class labels [n] for loss={loss!r}, got shape {y.shape}")
    classes, idx = np.unique(y, return_inverse=True)
    if loss == "logistic" and len(classes) != 2:
        raise ValueError(f"{fn}: loss='logistic' needs exactly 2 classes, y has {len(classes)}; "
                         "use loss='softmax' for more")
    if len(classes) < 2:
        raise ValueError(f"{fn}: y has a single class {classes!r}; a classifier needs at least 2")
    if loss == "logistic":
        return idx.astype(np.float64)[:, None], classes
    return np.eye(len(classes))[idx], classes


def gbnn_fit(x, y, *, key, loss: str = "squared", stages: int = 50, units: int = 1,
             learning_rate: float = 1.0, subsample: float = 0.5, fit_steps: int = 200,
             activation: str = "sigmoid", init_scale: float = 1.0) -> GBNN:
    """Train a GBNN: ``stages`` sequential stages of ``units`` hidden units each.

    ``loss`` is ``"squared"`` (regression; ``y`` of shape ``[n]`` or ``[n, K]``),
    ``"logistic"`` (two classes) or ``"softmax"`` (two or more classes; ``y`` holds labels).
    ``learning_rate`` is the shrinkage ``nu``; ``subsample`` the fraction of rows each stage's
    network is fitted on (without replacement); ``fit_steps`` the L-BFGS iterations per stage.
    """
    fn = "gbnn_fit"
    if loss not in _LOSSES:
        raise ValueError(f"{fn}(loss={loss!r}): must be one of {_LOSSES}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{fn}(activation={activation!r}): must be one of {tuple(_ACTIVATIONS)}")
    _checks.positive_int(fn, "stages", stages)
    _checks.positive_int(fn, "units", units)
    _checks.positive_int(fn, "fit_steps", fit_steps)
    _checks.in_range(fn, "learning_rate", learning_rate, 0.0, math.inf, lo_open=True)
    _checks.in_range(fn, "subsample", subsample, 0.0, 1.0, lo_open=True, hi_open=False)
    _checks.in_range(fn, "init_scale", init_scale, 0.0, math.inf, lo_open=True)
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{fn}: x must be a matrix [n, d], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{fn}: x contains NaN or infinite values")
    n, d = x.shape
    y_enc, classes = _encode_targets(fn, loss, y, n)
    m = max(1, int(round(subsample * n)))
    dtype = jnp.result_type(float)
    out = _fit(jnp.asarray(x, dtype), jnp.asarray(y_enc, dtype), key, loss=loss, stages=stages,
               units=units, nu=float(learning_rate), m=m, fit_steps=fit_steps, activation=activation,
               init_scale=float(init_scale))
    return GBNN(*out, learning_rate=float(learning_rate), loss=loss, activation=activation, classes=classes)


def newton_step(loss: str, y, f, h, *, max_halvings: int = 30):
    """The safeguarded Newton step of ``phi(rho) = mean_i L(y_i, f_i + rho h_i)`` at 0.

    The Newton step ``-phi'(0) / phi''(0)``, halved until it does not increase ``phi`` (at most
    ``max_halvings`` times; 0 if it never stops increasing it, or if ``phi''(0) = 0``). For
    squared loss ``phi`` is quadratic and the plain Newton step is its exact minimizer, so it is
    never halved; for the classification losses a stage whose network barely moves the output
    (tiny curvature) would otherwise take a huge step and diverge.
    """
    phi = lambda rho: jnp.mean(_loss_terms(loss, y, f + rho * h))
    g, curv = jax.jvp(jax.grad(phi), (jnp.zeros((), f.dtype),), (jnp.ones((), f.dtype),))
    ok = curv > jnp.finfo(f.dtype).tiny
    rho = jnp.where(ok, -g / jnp.where(ok, curv, 1.0), 0.0)
    candidates = rho * 0.5 ** jnp.arange(max_halvings + 1, dtype=f.dtype)
    decrease = jax.vmap(phi)(candidates) <= phi(jnp.zeros((), f.dtype))
    return jnp.where(jnp.any(decrease), candidates[jnp.argmax(decrease)], 0.0)


@functools.partial(jax.jit, static_argnames=("loss", "stages", "units", "nu", "m", "fit_steps", "activation",
                                             "init_scale"))
def _fit(x, y, key, *, loss, stages, units, nu, m, fit_steps, activation, init_scale):
    n, d = x.shape
    k = y.shape[1]
    act = _ACTIVATIONS[activation]
    f0 = _intercept(loss, y)
    solver = optax.lbfgs()

    def h_apply(p, xs):
        w1, b1, w2, b2 = p
        return act(xs @ w1 + b1) @ w2 + b2

    def stage(f, skey):
        kperm, k1, k2 = jax.random.split(skey, 3)
        r = -jax.grad(lambda f_: jnp.sum(_loss_terms(loss, y, f_)))(f)  # pseudo-residuals
        rows = jax.random.permutation(kperm, n)[:m]
        xs, rs = x[rows], r[rows]
        # Glorot-uniform initialisation of the stage's small network
        lim1 = init_scale * jnp.sqrt(6.0 / (d + units))
        lim2 = init_scale * jnp.sqrt(6.0 / (units + k))
        p0 = (jax.random.uniform(k1, (d, units), x.dtype, -lim1, lim1), jnp.zeros(units, x.dtype),
              jax.random.uniform(k2, (units, k), x.dtype, -lim2, lim2), jnp.zeros(k, x.dtype))
        obj = lambda p: 0.5 * jnp.mean(jnp.sum((h_apply(p, xs) - rs) ** 2, axis=-1))
        value_and_grad = optax.value_and_grad_from_state(obj)

        def lbfgs_step(carry, _):
            p, state = carry
            value, grad = value_and_grad(p, state=state)
            upd, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=obj)
            return (optax.apply_updates(p, upd), state), None

        (p, _), _ = jax.lax.scan(lbfgs_step, (p0, solver.init(p0)), None, length=fit_steps)
        h = h_apply(p, x)
        rho = newton_step(loss, y, f, h)
        f = f + nu * rho * h
        return f, (p, rho, jnp.mean(_loss_terms(loss, y, f)))

    f_init = jnp.broadcast_to(f0, (n, k))
    _, ((w1, b1, w2, b2), rho, train_loss) = jax.lax.scan(stage, f_init, jax.random.split(key, stages))
    return f0, w1, b1, w2, b2, rho, train_loss
