"""Helpers shared by the estimators: many continuation calls in one trace, weighted sums."""
from __future__ import annotations


import jax
import jax.numpy as jnp

__all__ = ["call_many", "wsum", "bcast_like"]


def call_many(kont, keys, xs):
    """``kont(keys[j], xs[j], None)`` for every ``j``, traced once with ``lax.map``.

    ``keys`` is one key (shared by every call: common random numbers downstream) or a stack
    of keys, one per call. Returns ``(outs, douts)``, lists of arrays with a leading axis.
    ``lax.map`` runs the calls one after another in a loop: on the CPU it costs about m
    evaluations of the continuation, where ``vmap`` costs up to twice that for large ones
    (BENCHMARKS.md, enumeration).
    """
    if keys.ndim == 0:  # one shared key
        return jax.lax.map(lambda x: kont(keys, x, None), xs)
    return jax.lax.map(lambda kx: kont(kx[0], kx[1], None), (keys, xs))


def wsum(w, outs):
    """``sum_j w[j] * outs[j]`` for each output array (``w`` of shape ``(m,)``)."""
    res = []
    for o in outs:
        wb = w.reshape(w.shape + (1,) * (o.ndim - 1))
        res.append(jnp.sum(wb * o, axis=0).astype(o.dtype))
    return res


def bcast_like(b, outs):
    """A baseline per output: ``b`` itself for each, or ``b[i]`` when ``b`` is a list/tuple."""
    if isinstance(b, (list, tuple)):
        if len(b) != len(outs):
            raise ValueError(f"a baseline list has {len(b)} entries but the objective has "
                             f"{len(outs)} outputs")
        return list(b)
    return [b] * len(outs)
