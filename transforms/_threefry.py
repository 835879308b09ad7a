"""Standard normal draws identical to ``jax.random.normal``, with an unrolled Threefry-2x32.

On CPU, JAX lowers its Threefry-2x32 hash as a rolled loop (five iterations of four rounds,
for compile speed); each iteration materializes the whole array, which makes random bits about
ten times slower than the same hash unrolled into one elementwise fusion. Particle methods that
draw ``N * d`` normals per step (CBO) spend most of their time there. The core reaches these
functions through ``_xla_cpu`` (which uses them on XLA:CPU only and says what they buy).

:func:`normal`, :func:`bits` and :func:`split` compute the same functions as
``jax.random.normal(key, shape, float32)``, ``jax.random.bits`` and ``jax.random.split`` for
Threefry keys with ``jax_threefry_partitionable`` on (JAX's default): the same counters
(the flat element index as a 64-bit number split into two 32-bit words), the same 20 rounds and
key schedule (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"), the same
bits-to-float map and the same inverse-error-function transform; ``tests/transforms/test_cbo.py``
checks bit equality. Anything else (other key implementations, other dtypes, the
non-partitionable layout, more than 2**32 elements) falls back to ``jax.random`` itself.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x, r):
    return lax.shift_left(x, np.uint32(r)) | lax.shift_right_logical(x, np.uint32(32 - r))


def threefry2x32(k0, k1, x0, x1):
    """The Threefry-2x32 block function with 20 rounds, unrolled; uint32 arrays broadcast."""
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _is_threefry(key, size: int) -> bool:
    """Whether the unrolled hash reproduces jax.random for ``size`` numbers from ``key``."""
    if size >= 2**32 or not jax.config.jax_threefry_partitionable:
        return False
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return False
    return str(jax.random.key_impl(key)) in ("threefry2x32", "fry")


def _hash_counts(key, shape):
    """The two Threefry output words for counters 0 .. prod(shape)-1, each of ``shape``."""
    data = jax.random.key_data(key)
    count = lax.iota(np.uint32, math.prod(shape)).reshape(shape)
    return threefry2x32(data[..., 0], data[..., 1], jnp.zeros_like(count), count)


def bits(key, shape):
    """``jax.random.bits(key, shape, uint32)`` (see the module docstring)."""
    shape = tuple(shape)
    if not _is_threefry(key, math.prod(shape)):
        return jax.random.bits(key, shape, jnp.uint32)
    b0, b1 = _hash_counts(key, shape)
    return b0 ^ b1


def split(key, num: int = 2):
    """``jax.random.split(key, num)`` (same keys) with the hash unrolled."""
    if not _is_threefry(key, num):
        return jax.random.split(key, num)
    b0, b1 = _hash_counts(key, (num,))
    return jax.random.wrap_key_data(jnp.stack([b0, b1], axis=-1), impl=jax.random.key_impl(key))


def normal(key, shape, dtype=jnp.float32):
    """Standard normal draws equal to ``jax.random.normal(key, shape, dtype)``."""
    shape = tuple(shape)
    if np.dtype(dtype) != np.float32 or not _is_threefry(key, math.prod(shape)):
        return jax.random.normal(key, shape, dtype)
    return normal_from_bits(bits(key, shape))


def normal_from_bits(b):
    """JAX's float32 bits-to-normal map: ``sqrt(2) erfinv(u)``, ``u`` uniform on ``[lo, 1)``
    with ``lo`` the float after -1. Finite for every ``b``: the extreme words 0 and
    ``2**32 - 1`` give -5.42 and 5.22 (``u`` stays below 1 after rounding);
    ``tests/estimators/test_edge_draws.py`` evaluates all ``2**23`` distinct outputs."""
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0), dtype=np.float32)
    f = lax.bitcast_convert_type(lax.shift_right_logical(b, np.uint32(9)) | np.uint32(0x3F800000),
                                 np.float32) - np.float32(1.0)
    u = lax.max(lo, f * (np.float32(1.0) - lo) + lo)
    return np.float32(np.sqrt(2)) * lax.erf_inv(u)
