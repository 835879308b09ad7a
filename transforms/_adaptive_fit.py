"""``fit`` with an adaptive batch size (e.g. ``ppl.backends.adaptive.AdaptiveBatch``).

The controller is duck-typed (``transforms`` may not import ``backends``): it has ``initial``,
``maximum``, ``every``, ``buckets()`` and ``next_batch_size(per_example_grads, current)``.

Step ``t`` uses ``fold_in(step_key, t)``, batch size ``b_t`` and the examples
``examples_seen .. examples_seen + b_t - 1`` of a stream that concatenates the epoch
permutations ``fold_in(data_key, epoch)`` (the same permutations as fixed-batch ``fit``). A
chunk runs under ``lax.while_loop`` with the batch size fixed (a static shape) and stops early
when the controller picks another bucket; the next chunk is compiled for that bucket (once per
bucket). The checkpoint holds the fit state, the controller's state (current batch size,
examples seen) and the batch size of every step, so a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl._plate import record_sites

from . import _checkpoint
from .fit import (FitResult, NonFiniteError, _check_compiler_options, _epoch_permutation, _progress,
                  _warn_unscaled_minibatch, kernel)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AdaptiveBatchState:
    batch_size: Any      # int32: the batch size of the next step
    examples_seen: Any   # int32: position in the stream of epoch permutations


def _stream_batch(data, key, pos, b, n):
    """Examples ``pos .. pos + b - 1`` of the stream of epoch permutations (``b <= n``)."""
    k = pos + jnp.arange(b, dtype=jnp.int32)
    e0 = pos // n
    p0, p1 = _epoch_permutation(key, e0, n), _epoch_permutation(key, e0 + 1, n)
    within = k % n
    idx = jnp.where(k // n == e0, p0[within], p1[within])
    return jax.tree_util.tree_map(lambda a: a[idx], data)


def _per_example_grads(loss, key, params, batch):
    one = lambda ex: jax.grad(loss, argnums=1)(key, params, jax.tree_util.tree_map(lambda a: a[None], ex))
    return jax.vmap(one)(batch)


def _check(controller, data):
    for name in ("initial", "maximum", "every", "buckets", "next_batch_size"):
        if not hasattr(controller, name):
            raise ValueError(f"fit(batch_size={controller!r}): expected an int or an adaptive-batch controller "
                             "such as ppl.backends.adaptive.AdaptiveBatch (missing ." + name + ")")
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError("fit: an adaptive batch size needs data= (the examples to draw minibatches from)")
    n = leaves[0].shape[0] if np.ndim(leaves[0]) else None
    if n is None or any(np.shape(x)[:1] != (n,) for x in leaves):
        raise ValueError("fit(data=...): every array in data needs the same leading (example) axis; "
                         f"got shapes {[np.shape(x) for x in leaves]}")
    if controller.maximum > n:
        raise ValueError(f"fit: the adaptive batch size's maximum ({controller.maximum}) exceeds the number of "
                         f"examples {n}; lower maximum")
    return n


def fit_adaptive(loss, optimizer, params, *, key, num_steps, data, controller, chunk, checkpoint, resume,
                 callbacks, progress, compiler_options, checkpoint_info=None) -> FitResult:
    n_examples = _check(controller, data)
    _check_compiler_options(compiler_options)
    kern = kernel(loss, optimizer)
    state = kern.init(params)
    ad = AdaptiveBatchState(jnp.int32(controller.initial), jnp.int32(0))
    history = np.zeros((0,), np.float32)
    sizes = np.zeros((0,), np.int32)
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        both, history, extras = _checkpoint.load(checkpoint, {"fit": state, "adaptive_batch": ad},
                                                 extras=("batch_sizes",))
        state, ad, sizes = both["fit"], both["adaptive_batch"], extras["batch_sizes"].astype(np.int32)
        if not (len(sizes) == len(history) == int(state.step)):
            raise _checkpoint.CheckpointError(
                f"checkpoint {checkpoint!r}: {len(sizes)} batch sizes, {len(history)} losses and step "
                f"{int(state.step)} disagree; it is damaged")
    step_key, data_key = jax.random.split(key)
    every = int(controller.every)

    @functools.partial(jax.jit, static_argnums=(5,), compiler_options=compiler_options)
    def run_chunk(state, ad, data, t0, n, b):
        def cond(c):
            i, _, _, stop, *_ = c
            return (i < n) & ~stop

        def body(c):
            i, state, ad, _, losses, finite = c
            t = t0 + i
            k = jax.random.fold_in(step_key, t)
            batch = _stream_batch(data, data_key, ad.examples_seen, b, n_examples)
            new, info = kern.step(k, state, batch, batch_size=b)
            nb = jax.lax.cond(t % every == 0,
                              lambda: controller.next_batch_size(_per_example_grads(loss, k, state.params, batch), b),
                              lambda: jnp.int32(b))
            ok = info["finite"]
            state = jax.tree_util.tree_map(lambda a, c_: jnp.where(ok, a, c_), new, state)
            ad = AdaptiveBatchState(jnp.where(ok, nb, b).astype(jnp.int32),
                                    ad.examples_seen + jnp.where(ok, b, 0).astype(jnp.int32))
            losses = losses.at[i].set(info["loss"].astype(losses.dtype))
            finite = finite.at[i].set(ok)
            return i + 1, state, ad, ~ok | (ad.batch_size != b), losses, finite

        init = (jnp.int32(0), state, ad, jnp.array(False), jnp.zeros((chunk,), jnp.float32), jnp.zeros((chunk,), bool))
        count, state, ad, _, losses, finite = jax.lax.while_loop(cond, body, init)
        return state, ad, count, losses, finite

    bar = _progress(progress, num_steps, int(state.step))
    done = int(state.step)
    checked = False
    try:
        while done < num_steps:
            n = min(chunk, num_steps - done)
            b = int(ad.batch_size)
            with record_sites() as seen:  # staged once per bucket: check the first one
                new_state, new_ad, count, losses, finite = run_chunk(state, ad, data, jnp.int32(done), jnp.int32(n), b)
            if not checked:
                _warn_unscaled_minibatch(seen, data, b, adaptive=True)
                checked = True
            count = int(count)
            losses, finite = np.asarray(losses[:count]), np.asarray(finite[:count])
            good = count if finite.all() else int(np.argmin(finite))
            history = np.concatenate([history, losses[:good]])
            sizes = np.concatenate([sizes, np.full(good, b, np.int32)])
            state, ad = new_state, new_ad  # a bad step left both unchanged
            done += good
            if checkpoint is not None:
                _checkpoint.save(checkpoint, {"fit": state, "adaptive_batch": ad}, history,
                                 extras={"batch_sizes": sizes}, info=checkpoint_info)
            if good < count:
                raise NonFiniteError(
                    f"fit: the loss or its gradient is not finite at step {done} (loss {losses[good]}, batch "
                    f"size {b}). The state before that step is kept (error.state"
                    + (f", and the checkpoint {checkpoint})" if checkpoint else ")")
                    + ". Lower the learning rate, check the data, or bound scales with softplus.", state)
            for cb in callbacks:
                cb(done, state, losses)
            if bar is not None:
                bar.update(good)
                bar.set_postfix(loss=f"{losses[-1]:.4g}", batch=b)
    finally:
        if bar is not None:
            bar.close()
    return FitResult(state.params, state, history, sizes)
