"""Helpers shared by the estimators: many continuation calls in one trace, weighted sums."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl.transforms import EstimatorError

__all__ = ["call_many", "wsum", "bcast_like", "check_batch_size"]


def check_batch_size(est, site):
    b = est.batch_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise EstimatorError(f"{type(est).__name__} at site {site.name!r}: batch_size={b!r}; it must be an "
                             "integer >= 1 (1: one continuation call at a time; k: k calls vmapped together).")


def call_many(kont, keys, xs, batch_size: int):
    """``kont(keys[j], xs[j], None)`` for every ``j``, traced once.

    ``keys`` is one key (shared by every call: common random numbers downstream) or a stack
    of keys, one per call. Returns ``(outs, douts)``, lists of arrays with a leading axis.
    ``batch_size`` calls run together: 1 is a ``lax.map`` loop, ``>= m`` one ``vmap``, in
    between ``lax.map`` over vmapped groups (see :class:`Enum` for the costs).
    """
    m = xs.shape[0]
    if keys.ndim == 0:  # one shared key
        f, args = (lambda x: kont(keys, x, None)), xs
    else:
        f, args = (lambda kx: kont(kx[0], kx[1], None)), (keys, xs)
    if batch_size >= m:
        return jax.vmap(f)(args)
    return jax.lax.map(f, args, batch_size=None if batch_size == 1 else batch_size)


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
