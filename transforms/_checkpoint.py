"""Checkpoints in a safe format: ``.npz`` of arrays (no pickle) written atomically.

Loading never runs code (``allow_pickle=False``). Each array is stored under its pytree key
path; loading checks the paths, shapes and dtypes against a template state, so a checkpoint
of another model is refused with a clear message. Writes go to a temporary file in the same
folder, are flushed to disk, then renamed over the old file: a crash leaves either the old or
the new checkpoint, never a torn one.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import jax
import numpy as np

__all__ = ["save", "load", "CheckpointError"]

_META = "__meta__"
_HISTORY = "__history__"
_EXTRA = "__extra__."


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted, or does not fit the state."""


def _flatten(state):
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    out = {}
    for path, leaf in flat:
        arr = np.asarray(jax.random.key_data(leaf) if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key) else leaf)
        out[jax.tree_util.keystr(path)] = arr
    return out


def save(path, state, history=None, extras=None):
    """Write ``state`` (a pytree of arrays), an optional loss history and optional named 1-D
    ``extras`` (e.g. the batch size of every step) to ``path``."""
    arrays = _flatten(state)
    if _META in arrays or _HISTORY in arrays or any(k.startswith(_EXTRA) for k in arrays):
        raise ValueError("state has a leaf named like checkpoint metadata")
    meta = {"format": "ppl-checkpoint-1", "keys": sorted(arrays)}
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays[_HISTORY] = np.asarray([] if history is None else history, np.float32)
    for name, value in (extras or {}).items():
        arrays[_EXTRA + name] = np.asarray(value)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path, template, extras=None):
    """``(state, history)`` from ``path``, shaped like ``template`` (e.g. ``kernel.init(params)``).

    ``extras``: names of arrays saved with ``save(..., extras=)``; then ``(state, history,
    {name: array})`` is returned, and a missing name is a CheckpointError.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:  # the file closes on every path
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(
            f"checkpoint {path!r} is truncated or corrupted ({type(e).__name__}: {e}). It was not "
            "loaded; the run's earlier state is untouched. Delete it to start over, or restore a "
            "copy.") from None
    if _META not in data:
        raise CheckpointError(f"{path!r} is not a ppl checkpoint (no metadata)")
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for p, leaf in flat:
        k = jax.tree_util.keystr(p)
        if k not in data:
            raise CheckpointError(f"checkpoint {path!r} has no array for {k}: it was written for "
                                  "another model or optimizer")
        arr = data[k]
        want = np.shape(leaf)
        is_key = jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)
        if is_key:
            leaves.append(jax.random.wrap_key_data(arr))
            continue
        want_dtype = jax.numpy.asarray(leaf).dtype
        if arr.shape != tuple(want) or arr.dtype != want_dtype:
            raise CheckpointError(f"checkpoint {path!r}: {k} has shape {arr.shape} and dtype "
                                  f"{arr.dtype}, the state expects {tuple(want)} {want_dtype}")
        leaves.append(jax.numpy.asarray(arr))
    state = jax.tree_util.tree_unflatten(treedef, leaves)
    if extras is None:
        return state, data[_HISTORY]
    missing = [name for name in extras if _EXTRA + name not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} has no {', '.join(missing)}: it was written by another "
                              "kind of run")
    return state, data[_HISTORY], {name: data[_EXTRA + name] for name in extras}
