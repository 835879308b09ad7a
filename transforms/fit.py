"""Fitting: an objective and an optax optimizer become a kernel (``init``, ``step``) and a loop.

``loss(key, params, batch) -> scalar`` is minimized; its ``jax.grad`` must be the gradient
estimate you want (e.g. ``lambda k, p, b: -E.estimate(k, model_args(p, b), guide_args(p, b))``
for an objective ``E = expectation(...)``). ``params`` is any pytree.

- :func:`kernel` gives ``init(params) -> FitState`` and ``step(key, state, batch) ->
  (state, info)``, pure functions in the BlackJAX style.
- :func:`fit` runs jit-compiled chunks of steps under ``lax.scan``, draws minibatches,
  shows a progress bar on a terminal (quiet otherwise), keeps the history of losses,
  calls callbacks after each chunk, checkpoints atomically and resumes exactly: step ``t``
  uses ``fold_in(key, t)`` for its randomness and its minibatch, so a resumed run repeats
  the uninterrupted one bit for bit on the same machine.
- A non-finite loss or gradient stops the run with :class:`NonFiniteError` naming the step
  and the parameters whose gradient is not finite; the state it carries (and the checkpoint
  written) is the last good one.
- ``compiler_options`` go to ``jax.jit`` of the chunk (XLA options for this compile only);
  :data:`CPU_FUSED_DOTS` (XLA:CPU) is the one that pays for models made of many small matrix
  products (``transforms/_xla_cpu.py`` says what it buys).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl._plate import record_sites

from . import _checkpoint, _sharding, _xla_cpu
from ._checkpoint import CheckpointError

__all__ = ["FitState", "Kernel", "kernel", "fit", "FitResult", "NonFiniteError", "CheckpointError",
           "save_checkpoint", "load_checkpoint", "peek_checkpoint", "CPU_FUSED_DOTS",
           "UnscaledMinibatchWarning"]

#: XLA:CPU option for models made of many small matrix products
#: (``fit(..., compiler_options=CPU_FUSED_DOTS)``); what it buys and where: ``_xla_cpu``.
CPU_FUSED_DOTS = _xla_cpu.CPU_FUSED_DOTS

save_checkpoint = _checkpoint.save
load_checkpoint = _checkpoint.load
peek_checkpoint = _checkpoint.peek


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FitState:
    params: Any
    opt_state: Any
    step: Any  # int32 scalar: the number of updates applied


class Kernel(NamedTuple):
    init: Callable
    step: Callable


class NonFiniteError(FloatingPointError):
    """The loss or its gradient was not finite; ``.state`` is the last good state."""

    def __init__(self, message, state):
        super().__init__(message)
        self.state = state


def kernel(loss: Callable, optimizer: optax.GradientTransformation) -> Kernel:
    """``init(params) -> FitState``; ``step(key, state, batch, **extra_args) -> (state, info)``.

    ``extra_args`` (optional) go to the optimizer's ``update`` as optax extra arguments.

    ``info`` has ``loss``, ``grad_norm`` and ``finite``; a non-finite step leaves the state
    unchanged (``finite`` is False), so callers can stop on it.
    """

    def init(params):
        params = jax.tree_util.tree_map(jnp.asarray, params)
        return FitState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def step(key, state, batch=None, **extra_args):
        value, grads = jax.value_and_grad(loss, argnums=1)(key, state.params, batch)
        leaves = jax.tree_util.tree_leaves(grads)
        finite = jnp.isfinite(value) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in leaves]))
        if extra_args:  # e.g. batch_size= in adaptive-batch mode; plain transforms ignore them
            updates, opt_state = optax.with_extra_args_support(optimizer).update(
                grads, state.opt_state, state.params, **extra_args)
        else:
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = FitState(params, opt_state, state.step + 1)
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, state)
        return new, {"loss": value, "grad_norm": optax.tree.norm(grads), "finite": finite}

    return Kernel(init, step)


@dataclasses.dataclass
class FitResult:
    params: Any
    state: FitState
    history: np.ndarray  # loss per step, from step 0 (restored from the checkpoint on resume)
    batch_sizes: np.ndarray | None = None  # adaptive-batch mode: the batch size of every step


def _epoch_permutation(key, epoch, n):
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def _minibatch(data, batch_size, key, t, perms=None, first_epoch=0):
    """The minibatch of step ``t``: a slice of the permutation of epoch ``t // n_per_epoch``.

    ``perms`` may hold the permutations of epochs ``first_epoch, first_epoch + 1, ...``
    precomputed (one per epoch a chunk spans, instead of one per step).
    """
    if data is None:
        return None
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    if batch_size is None or batch_size >= n:
        return data
    per_epoch = n // batch_size
    epoch, j = t // per_epoch, t % per_epoch
    perm = _epoch_permutation(key, epoch, n) if perms is None else perms[epoch - first_epoch]
    idx = jax.lax.dynamic_slice_in_dim(perm, j * batch_size, batch_size)
    return jax.tree_util.tree_map(lambda a: a[idx], data)


def _chunk_permutations(data, batch_size, key, t0, chunk):
    """``(perms, first_epoch)`` for every epoch that steps ``t0 .. t0 + chunk - 1`` touch."""
    if data is None:
        return None, 0
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    if batch_size is None or batch_size >= n:
        return None, 0
    per_epoch = n // batch_size
    first = t0 // per_epoch
    count = chunk // per_epoch + 2  # static bound on the epochs a chunk spans
    perms = jax.vmap(lambda e: _epoch_permutation(key, e, n))(first + jnp.arange(count))
    return perms, first


def _check_data(data, batch_size):
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        return
    n = leaves[0].shape[0] if np.ndim(leaves[0]) else None
    if n is None or any(np.shape(x)[:1] != (n,) for x in leaves):
        raise ValueError("fit(data=...): every array in data needs the same leading (example) axis; "
                         f"got shapes {[np.shape(x) for x in leaves]}")
    if batch_size is not None and (batch_size < 1 or batch_size > n):
        raise ValueError(f"fit(batch_size={batch_size}): must be between 1 and the number of examples {n}")


def fit(loss, optimizer, params, *, key, num_steps, data=None, batch_size=None, chunk=100,
        checkpoint=None, resume=False, callbacks=(), progress=None, debug=False,
        compiler_options=None, checkpoint_info=None, mesh=None, data_axis=None,
        param_sharding=None) -> FitResult:
    """Minimize ``loss`` for ``num_steps`` steps from ``params`` (see the module docstring).

    ``checkpoint``: a file path (``.npz``); written atomically after every chunk.
    ``resume=True`` continues from it when it exists. ``checkpoint_info``: a JSON-serializable
    dict stored in every checkpoint written (e.g. the run's configuration), read back without a
    template by :func:`peek_checkpoint` (``(steps, info)``). ``callbacks``: functions
    ``cb(step, state, losses_of_chunk)`` called after each chunk. ``debug=True``: on a
    non-finite step, re-run it eagerly with ADEV's site checks to name the random choice.
    ``compiler_options``: XLA options for compiling the chunk (``jax.jit``'s argument), e.g.
    :data:`CPU_FUSED_DOTS`; checked before anything runs.

    ``batch_size``: an int, or an adaptive-batch controller such as
    ``ppl.backends.adaptive.AdaptiveBatch`` (any object with ``initial``, ``maximum``, ``every``,
    ``buckets()`` and a jit-compatible ``next_batch_size(per_example_grads, current)``). Then
    the batch size of each step is chosen by the controller from the previous step's
    per-example gradients, the optimizer's ``update`` receives ``batch_size=`` as an extra
    argument, minibatches are consecutive slices of a stream of epoch permutations (no example
    dropped at epoch ends), and ``FitResult.batch_sizes`` holds the batch size of every step
    (checkpointed; resumed exactly). ``debug`` is not supported in this mode.

    ``mesh``: a :class:`jax.sharding.Mesh` for data-parallel training (``data_axis``: the mesh
    axis that splits the examples; optional when the mesh has one axis). The data is placed
    with its leading axis split along that axis, each step's minibatch is split the same way,
    and the parameters, optimizer state and losses are replicated; the chunk is compiled once
    with these shardings. The number of examples and ``batch_size`` must be divisible by the
    axis size. Results equal the one-device run up to the order of float additions;
    checkpoints hold plain arrays (written by process 0 only), so a run checkpointed on one
    device count resumes on another. Not supported with an adaptive batch size.

    ``param_sharding`` (with ``mesh``): the parameters, and the parts of the optimizer state
    shaped like them, split along mesh axes instead of replicated (ZeRO/FSDP-style when the
    axis is the data axis, tensor-parallel when it is another one). A mesh axis name
    (``"model"``: each leaf's largest dimension divisible by that axis' size is split, leaves
    without one stay replicated), a pytree of ``PartitionSpec`` shaped like ``params``, or a
    function ``(path, leaf) -> PartitionSpec``; bad axes or indivisible dimensions are refused
    naming the parameter. Without ``data`` the mesh then needs no ``data_axis``. The chunk is
    compiled once with these shardings; results equal the one-device run up to the order of
    float additions; checkpoints hold whole arrays (gathered across processes), so they resume
    with another mesh, another ``param_sharding``, or none.
    """
    if num_steps < 0 or chunk < 1:
        raise ValueError(f"fit: num_steps must be >= 0 and chunk >= 1 (got {num_steps}, {chunk})")
    if data_axis is not None and mesh is None:
        raise ValueError(f"fit(data_axis={data_axis!r}) names an axis of mesh=, which is missing")
    if param_sharding is not None and mesh is None:
        raise ValueError("fit(param_sharding=...) places the parameters on the axes of mesh=, which is missing")
    if batch_size is not None and not isinstance(batch_size, (int, np.integer)):
        if mesh is not None:
            raise ValueError("fit(mesh=...) is not supported with an adaptive batch size (its buckets would "
                             "each need a batch size divisible by the mesh axis); use a fixed batch_size")
        from ._adaptive_fit import fit_adaptive  # an adaptive-batch controller (duck-typed)

        if debug:
            raise ValueError("fit(debug=True) is not supported with an adaptive batch size; rerun the failing "
                             "step with a fixed batch_size to name the random choice")

        return fit_adaptive(loss, optimizer, params, key=key, num_steps=num_steps, data=data,
                            controller=batch_size, chunk=chunk, checkpoint=checkpoint, resume=resume,
                            callbacks=callbacks, progress=progress, compiler_options=compiler_options,
                            checkpoint_info=checkpoint_info)
    _check_data(data, batch_size)
    where = None if mesh is None else _sharding.placement(mesh, data_axis, data, batch_size,
                                                          need_data=param_sharding is None)
    specs = None if param_sharding is None else _sharding.param_specs(param_sharding, params, where.mesh)
    _check_compiler_options(compiler_options)
    kern = kernel(loss, optimizer)
    # weak types (params such as jnp.full(n, 1.0)) would not survive the first chunk and make
    # the second compile again
    state = jax.tree_util.tree_map(_strong, kern.init(params))
    history = np.zeros((0,), np.float32)
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state, history = _checkpoint.load(checkpoint, state)
    step_key, data_key = jax.random.split(key)
    shardings = {}
    if where is not None:
        placed = where.replicated if specs is None else _sharding.state_shardings(state, specs, where, optimizer)
        state = jax.device_put(state, placed)
        data = _sharding.place_data(data, where)
        shardings = dict(in_shardings=(placed, where.examples, where.replicated, where.replicated),
                         out_shardings=(placed, where.replicated, where.replicated))

    @functools.partial(jax.jit, compiler_options=compiler_options, **shardings)
    def run_chunk(state, data, t0, n):
        perms, first_epoch = _chunk_permutations(data, batch_size, data_key, t0, chunk)

        def body(carry, i):
            state, bad = carry
            t = t0 + i
            batch = _minibatch(data, batch_size, data_key, t, perms, first_epoch)
            if where is not None:
                batch = _sharding.constrain_batch(batch, where)
            new, info = kern.step(jax.random.fold_in(step_key, t), state, batch)
            ok = info["finite"] & ~bad & (i < n)
            state = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, state)
            return (state, bad | (~info["finite"] & (i < n))), (info["loss"], info["finite"])

        (state, _), (losses, finite) = jax.lax.scan(body, (state, jnp.array(False)), jnp.arange(chunk))
        return state, losses, finite

    if where is not None:  # the loss is traced under the mesh: particle_axis= and P(...) name its axes
        run_chunk = _under_mesh(run_chunk, where.mesh)

    bar = _progress(progress, num_steps, int(state.step))
    done = int(state.step)
    first_call = True
    try:
        while done < num_steps:
            n = min(chunk, num_steps - done)
            if first_call:  # the first call stages the loss: see which sites a plate scales
                with record_sites() as seen:
                    new_state, losses, finite = run_chunk(state, data, jnp.int32(done), jnp.int32(n))
                _warn_unscaled_minibatch(seen, data, batch_size)
                first_call = False
            else:
                new_state, losses, finite = run_chunk(state, data, jnp.int32(done), jnp.int32(n))
            losses, finite = np.asarray(losses[:n]), np.asarray(finite[:n])
            if not finite.all():
                bad = int(np.argmin(finite))
                state = new_state  # updates stopped at the first bad step: the last good state
                history = np.concatenate([history, losses[:bad]])
                if checkpoint is not None:
                    _save_once(checkpoint, state, history, checkpoint_info)
                # the eager re-runs see the mesh too (a loss may name its axes, e.g. particle_axis=)
                with contextlib.nullcontext() if where is None else jax.set_mesh(where.mesh):
                    names = _nonfinite_params(loss, step_key, data_key, state, data, batch_size, done + bad)
                    site = _nonfinite_site(loss, step_key, data_key, state, data, batch_size, done + bad) \
                        if debug else "run with fit(..., debug=True) to name the random choice"
                raise NonFiniteError(
                    f"fit: the loss or its gradient is not finite at step {done + bad} (loss "
                    f"{losses[bad]}); parameters with non-finite gradients: {names or 'none (the loss)'}; "
                    f"{site}. "
                    "The state before that step is kept (error.state"
                    + (f", and the checkpoint {checkpoint})" if checkpoint else ")")
                    + ". Lower the learning rate, check the data, or bound scales with softplus.",
                    state)
            state = new_state
            history = np.concatenate([history, losses])
            done += n
            if checkpoint is not None:
                _save_once(checkpoint, state, history, checkpoint_info)
            for cb in callbacks:
                cb(done, state, losses)
            if bar is not None:
                bar.update(n)
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
    finally:
        if bar is not None:
            bar.close()
    return FitResult(state.params, state, history)


def _under_mesh(f, mesh):
    def call(*args):
        with jax.set_mesh(mesh):
            return f(*args)
    return call


def _strong(a):
    return jnp.asarray(a, a.dtype) if getattr(a, "weak_type", False) else a


def _save_once(path, state, history, info):
    """Write the checkpoint from process 0 only (after every process has gathered the whole state)."""
    state = _sharding.gather_for_checkpoint(state)
    if jax.process_index() == 0:
        _checkpoint.save(path, state, history, info=info)


class UnscaledMinibatchWarning(UserWarning):
    """``fit`` minibatches a likelihood that no subsampling ``ppl.plate`` scales."""


def _warn_unscaled_minibatch(seen, data, batch_size, adaptive=False):
    """Warn when the loss observes the minibatch outside a subsampling plate and has a
    latent choice without the minibatch axis (a global one, whose posterior would be too wide).

    ``seen``: ``(address, observed, value_shape, scale)`` of each site the interpreters scored
    while the loss was staged (``ppl._plate.record_sites``).
    """
    if data is None or batch_size is None:
        return
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    if batch_size >= n:
        return
    unscaled_obs = sorted({"/".join(map(str, a)) for a, observed, shape, scale in seen
                           if observed and scale == 1.0 and batch_size in shape})
    global_latents = sorted({"/".join(map(str, a)) for a, observed, shape, scale in seen
                             if not observed and scale == 1.0 and batch_size not in shape})
    if unscaled_obs and global_latents:
        warnings.warn(
            f"fit(batch_size={batch_size}) with {n} examples: the observed site(s) "
            f"{', '.join(map(repr, unscaled_obs))} hold the minibatch but are not inside a "
            f"subsampling ppl.plate, so their log density counts {batch_size} of {n} examples "
            f"against the full weight of the latent(s) {', '.join(map(repr, global_latents))}: the "
            f"fitted posterior is too wide. Wrap the likelihood in the model: "
            f"`with ppl.plate('data', {n}, subsample_size="
            + ("x.shape[0]" if adaptive else f"{batch_size}")
            + "): ...` (N = the full data size"
            + (", and the minibatch's own size, which the adaptive controller changes" if adaptive else "")
            + "), which scales it by N / batch size.", UnscaledMinibatchWarning, stacklevel=4 if adaptive else 3)


def _check_compiler_options(options):
    """Refuse bad XLA options up front (compiling an empty function), naming the option."""
    if options is None:
        return
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ValueError(f"fit: compiler_options must be a dict of XLA option names to values, got {options!r}")
    try:
        jax.jit(lambda: jnp.zeros(()), compiler_options=options).lower().compile()
    except Exception as e:  # XLA's message names the option and the reason
        raise ValueError(f"fit: compiler_options {options!r} rejected by XLA on "
                         f"{jax.default_backend()}: {e}") from None


def _nonfinite_params(loss, step_key, data_key, state, data, batch_size, t):
    """Key paths of the parameters whose gradient is not finite at step ``t``."""
    batch = _minibatch(data, batch_size, data_key, t)
    grads = jax.grad(loss, argnums=1)(jax.random.fold_in(step_key, t), state.params, batch)
    flat, _ = jax.tree_util.tree_flatten_with_path(grads)
    return [jax.tree_util.keystr(path) or "params" for path, g in flat if not np.all(np.isfinite(np.asarray(g)))]


def _nonfinite_site(loss, step_key, data_key, state, data, batch_size, t):
    """Re-run step ``t`` eagerly in forward mode with ADEV's site checks; describe the site."""
    from .adev import debug_nonfinite

    batch = _minibatch(data, batch_size, data_key, t)
    tangent = jax.tree_util.tree_map(jnp.ones_like, state.params)
    try:
        with debug_nonfinite():
            jax.jvp(lambda p: loss(jax.random.fold_in(step_key, t), p, batch), (state.params,), (tangent,))
    except FloatingPointError as e:
        return f"first non-finite random choice: {e}"
    return "no random choice had non-finite parameters, values or log densities"


def _progress(progress, total, initial):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the progress bar is optional
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
