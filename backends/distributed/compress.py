"""Contractive compressors for the uplink of the distributed methods.

A compressor ``C`` maps a vector ``x`` (the flattened parameters' shape, ``d`` entries) to a
message of ``k`` (index, value) pairs, ``k <= d``, or to the dense vector itself. Decoding puts
the values back at their indices (zeros elsewhere). Each compressor states:

- ``alpha(d)``: the contraction constant, ``E ||C(x) - x||^2 <= (1 - alpha) ||x||^2``
  (Top-K: ``alpha = k / d`` deterministically; Rand-K as defined here: ``alpha = k / d`` in
  expectation; identity: 1). EF21's stepsize theory uses it (:func:`ef21_stepsize`).
- ``homogeneous``: whether ``C(t x) = t C(x)`` for every ``t > 0`` (with the same key); EF21-W's
  iterates equal EF21's exactly when it holds.
- ``message_bytes(d, dtype)``: the bytes one client sends for one message, counted as this
  implementation sends them: ``k`` values of ``dtype`` plus ``k`` int32 indices (an entropy
  coder could send the indices in fewer bits; that is not done here), or ``d`` values when
  dense.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

INDEX_BYTES = 4  # int32 indices


class Message(NamedTuple):
    """``indices`` (k,) int32 and ``values`` (k,); ``indices`` is None for a dense message."""
    indices: jax.Array | None
    values: jax.Array


def decode(msg: Message, d: int) -> jax.Array:
    if msg.indices is None:
        return msg.values
    return jnp.zeros((d,), msg.values.dtype).at[msg.indices].set(msg.values)


def _check_k(name, k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name}(k={k!r}): k must be a positive integer (the number of entries sent)")
    return int(k)


class TopK:
    """Keep the ``k`` entries of largest magnitude (ties broken by ``jax.lax.top_k``'s order).
    Deterministic, positively homogeneous, ``alpha = k / d``."""
    homogeneous = True

    def __init__(self, k: int):
        self.k = _check_k("top_k", k)

    def check(self, d):
        if self.k > d:
            raise ValueError(f"top_k(k={self.k}): k exceeds the number of parameters ({d}); use k <= {d} "
                             "or identity()")

    def alpha(self, d):
        return self.k / d

    def encode(self, key, x):
        del key
        _, idx = jax.lax.top_k(jnp.abs(x), self.k)
        return Message(idx.astype(jnp.int32), x[idx])

    def message_bytes(self, d, dtype):
        return self.k * (np.dtype(dtype).itemsize + INDEX_BYTES)

    def __repr__(self):
        return f"top_k({self.k})"


class RandK:
    """Keep ``k`` entries chosen uniformly without replacement, **unscaled**: the contractive
    version of Rand-K (the unbiased one multiplies by ``d / k``, which is not contractive).
    ``E ||C(x) - x||^2 = (1 - k/d) ||x||^2``, so ``alpha = k / d``. Positively homogeneous for a
    fixed key."""
    homogeneous = True

    def __init__(self, k: int):
        self.k = _check_k("rand_k", k)

    check = TopK.check
    alpha = TopK.alpha
    message_bytes = TopK.message_bytes

    def encode(self, key, x):
        idx = jax.random.choice(key, x.shape[0], (self.k,), replace=False).astype(jnp.int32)
        return Message(idx, x[idx])

    def __repr__(self):
        return f"rand_k({self.k})"


class Identity:
    """No compression: the dense vector, ``alpha = 1``."""
    homogeneous = True

    def check(self, d):
        pass

    def alpha(self, d):
        return 1.0

    def encode(self, key, x):
        del key
        return Message(None, x)

    def message_bytes(self, d, dtype):
        return d * np.dtype(dtype).itemsize

    def __repr__(self):
        return "identity()"


def top_k(k: int) -> TopK:
    return TopK(k)


def rand_k(k: int) -> RandK:
    return RandK(k)


def identity() -> Identity:
    return Identity()


def ef21_stepsize(smoothness, alpha, *, L=None, mean="arithmetic") -> float:
    """EF21's stepsize ``1 / (L + M sqrt(beta / theta))`` with ``theta = 1 - sqrt(1 - alpha)``,
    ``beta = (1 - alpha) / (1 - sqrt(1 - alpha))`` (Richtarik et al. 2021; Gasanov et al. 2024).

    ``smoothness``: the clients' constants ``L_i``. ``M`` is their arithmetic mean
    (``mean="arithmetic"``, ``L_AM``: EF21-W's theorem, and EF21's improved one) or their quadratic
    mean (``mean="quadratic"``, ``L_QM = sqrt(mean L_i^2)``: EF21's original theorem). ``L``: the
    smoothness constant of the average ``f = mean f_i`` (at most ``L_AM``; ``L_AM`` when not given).
    ``alpha``: the compressor's contraction constant (``compressor.alpha(d)``).
    """
    Ls = np.asarray(smoothness, dtype=np.float64)
    if Ls.ndim != 1 or Ls.size == 0 or not np.all(np.isfinite(Ls)) or np.any(Ls <= 0):
        raise ValueError(f"ef21_stepsize(smoothness=...): expected a nonempty vector of positive finite "
                         f"constants L_i, got {smoothness!r}")
    if not 0 < alpha <= 1:
        raise ValueError(f"ef21_stepsize(alpha={alpha!r}): the contraction constant must be in (0, 1]")
    if mean == "arithmetic":
        M = float(np.mean(Ls))
    elif mean == "quadratic":
        M = float(np.sqrt(np.mean(Ls ** 2)))
    else:
        raise ValueError(f"ef21_stepsize(mean={mean!r}): 'arithmetic' or 'quadratic'")
    L = float(np.mean(Ls)) if L is None else float(L)
    if not (L > 0 and math.isfinite(L)):
        raise ValueError(f"ef21_stepsize(L={L!r}): must be positive and finite")
    if alpha == 1:
        return 1.0 / L
    s = math.sqrt(1 - alpha)
    theta, beta = 1 - s, (1 - alpha) / (1 - s)
    return 1.0 / (L + M * math.sqrt(beta / theta))
