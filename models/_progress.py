"""A progress bar for long evaluations (tqdm when installed and asked for; otherwise nothing)."""
from __future__ import annotations

import contextlib
import sys

import jax
import jax.numpy as jnp


@contextlib.contextmanager
def bar(total: int, desc: str, enabled=None):
    """Yield ``advance(n)``; with ``enabled`` None the bar shows only on a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    tqdm = None
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # the bar is optional
            tqdm = None
    if tqdm is None:
        yield lambda n=1: None
        return
    b = tqdm(total=total, desc=desc, unit="img", unit_scale=True, dynamic_ncols=True, file=sys.stderr)
    try:
        yield b.update
    finally:
        b.close()


def describe(what: str, num_particles: int, num_examples: int) -> str:
    """``"log-likelihood, K = 1,000, 10,000 images"``."""
    return f"{what}, K = {num_particles:,}, {num_examples:,} images"


def in_blocks(fn, key, x, batch_size: int, desc: str, progress=None):
    """``fn(key_i, block)`` over blocks of ``batch_size`` examples of ``x``, block ``i`` with
    ``fold_in(key, i)``, concatenated; the last block is padded so every block compiles once.
    The bar (``desc``) advances by examples."""
    n = x.shape[0]
    pad = (-n) % batch_size
    xp = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    outs = []
    with bar(n, desc, progress) as advance:
        for i, s in enumerate(range(0, n + pad, batch_size)):
            outs.append(fn(jax.random.fold_in(key, i), xp[s:s + batch_size]).block_until_ready())
            advance(min(batch_size, n - s))
    return jnp.concatenate(outs)[:n]
