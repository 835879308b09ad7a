"""Random draws the estimators make themselves, finite for every value the PRNG can return.

``jax.random.uniform`` returns ``m 2^-p`` (``m`` an integer below ``2^p``, ``p`` the mantissa
bits: 23 for float32), so it can return exactly 0, and ``log(u)`` is then ``-inf``
(``jax.random.rayleigh`` computes ``sqrt(-2 log u)`` from it: an infinite draw once in
``2^23``). :func:`open_uniform` returns the midpoints ``(m + 1/2) 2^-p`` instead: the same
number of equally likely values, all strictly inside ``(0, 1)`` (from ``2^-(p+1)`` to
``1 - 2^-(p+1)``, the largest float below 1), and symmetric under ``u -> 1 - u`` (an
antithetic pair ``u``, ``1 - u`` is exactly equidistributed). Every ``log(u)`` and
``log1p(-u)`` of it is finite. ``tests/estimators/test_edge_draws.py`` evaluates each sampler
here at every value the uniform can take and compares the distribution with the exact one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["open_uniform", "rayleigh", "logistic"]

_UINT = {16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}


def open_uniform(key, shape, dtype=jnp.float32):
    """Uniform on the open interval ``(0, 1)``: ``(m + 1/2) 2^-p`` with ``m`` uniform on
    ``{0, ..., 2^p - 1}`` taken from the top ``p`` random bits (``p = finfo(dtype).nmant``).
    Exact in floating point (``m + 1/2`` needs ``p + 1`` significand bits)."""
    info = jnp.finfo(dtype)
    bits = jax.random.bits(key, tuple(shape), _UINT[info.bits])
    m = jax.lax.shift_right_logical(bits, np.array(info.bits - info.nmant, bits.dtype))
    return (m.astype(dtype) + np.array(0.5, dtype)) * np.array(2.0 ** -info.nmant, dtype)


def rayleigh(key, shape, dtype=jnp.float32):
    """Rayleigh(1) draws ``sqrt(-2 log u)``, ``u`` from :func:`open_uniform`: at most
    ``sqrt(2 (p + 1) log 2)`` (5.77 in float32), never infinite."""
    return jnp.sqrt(-2 * jnp.log(open_uniform(key, shape, dtype)))


def logistic(key, shape, dtype=jnp.float32):
    """Standard logistic draws ``log u - log(1 - u)``, ``u`` from :func:`open_uniform`:
    symmetric, within ``+-(p + 1) log 2`` (16.6 in float32), never infinite."""
    u = open_uniform(key, shape, dtype)
    return jnp.log(u) - jnp.log1p(-u)
