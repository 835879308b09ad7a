"""Checkpoints in a safe format: ``.npz`` of arrays (no pickle) written atomically.

Loading never runs code (``allow_pickle=False``). Each array is stored under its pytree key
path; loading checks the paths, shapes and dtypes against a template state, so a checkpoint
of another model is refused with a clear message. Writes go to a temporary file in the same
folder (``.<name>.<8 random characters>.tmp``), are flushed to disk, then renamed over the old
file: a crash leaves either the old or the new checkpoint, never a torn one. A write killed
before the rename leaves its temporary file behind; the next save of the same checkpoint
removes it (only names of exactly that pattern, for that checkpoint).

Every way a file can fail to read (not a zip, a truncated or bit-flipped archive, an
unsupported zip feature, a member that is not an array, missing or malformed metadata or
history, arrays the metadata does not list) raises :class:`CheckpointError` naming the file
and what is wrong; the zip's CRC-32 of every member is checked as it is read.
"""
from __future__ import annotations

import json
import os
import re
import tempfile

import jax
import numpy as np

__all__ = ["save", "load", "peek", "CheckpointError"]

_META = "__meta__"
_HISTORY = "__history__"
_EXTRA = "__extra__."
_FORMAT = "ppl-checkpoint-1"
#: the random part of :func:`tempfile.mkstemp` names
_RANDOM = "[a-z0-9_]{8}"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted, or does not fit the state."""


def _is_key(leaf):
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _flatten(state):
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    out = {}
    for path, leaf in flat:
        arr = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        out[jax.tree_util.keystr(path)] = arr
    return out


def _tmp_pattern(path):
    """The temporary files this module writes for ``path`` (older versions' names included)."""
    name = re.escape(os.path.basename(path))
    return re.compile(rf"^\.{name}\.{_RANDOM}\.tmp$|^\.ckpt-{_RANDOM}\.npz\.tmp$")


def _remove_stale_tmp(path):
    """Remove temporary files that a write of ``path`` killed before its rename left behind."""
    folder, pattern = os.path.dirname(os.path.abspath(path)), _tmp_pattern(path)
    for entry in os.scandir(folder):
        if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass


def save(path, state, history=None, extras=None, info=None):
    """Write ``state`` (a pytree of arrays), an optional loss history, optional named 1-D
    ``extras`` (e.g. the batch size of every step) and an optional JSON-serializable ``info``
    dict (e.g. the run's configuration; read back with :func:`peek`) to ``path``."""
    arrays = _flatten(state)
    if _META in arrays or _HISTORY in arrays or any(k.startswith(_EXTRA) for k in arrays):
        raise ValueError("state has a leaf named like checkpoint metadata")
    meta = {"format": _FORMAT, "keys": sorted(arrays)}
    if info is not None:
        if not isinstance(info, dict):
            raise TypeError(f"checkpoint info must be a dict, got {type(info).__name__}")
        try:
            meta["info"] = json.loads(json.dumps(info))
        except (TypeError, ValueError) as e:
            raise TypeError(f"checkpoint info must be JSON-serializable: {e}") from None
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays[_HISTORY] = np.asarray([] if history is None else history, np.float32)
    for name, value in (extras or {}).items():
        arrays[_EXTRA + name] = np.asarray(value)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _remove_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
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


def _corrupted(path, what):
    return CheckpointError(
        f"checkpoint {path!r} is truncated or corrupted ({what}). It was not loaded; the run's "
        "earlier state is untouched. Delete it to start over, or restore a copy.")


def _read(path):
    """Every array of the archive; any failure to read is a :class:`CheckpointError`."""
    try:
        with open(path, "rb") as f:  # the file closes on every path
            z = np.load(f, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise _corrupted(path, f"a bare {type(z).__name__}, not an .npz archive")
            with z:
                return {k: z[k] for k in z.files}
    except (MemoryError, CheckpointError):
        raise
    except Exception as e:  # zip, npy-header, CRC, zip-feature and OS errors alike
        raise _corrupted(path, f"{type(e).__name__}: {e}") from None


def _check_structure(path, data):
    """The metadata and history are well formed and list exactly the arrays present."""
    if _META not in data:
        raise CheckpointError(f"{path!r} is not a ppl checkpoint (no metadata)")
    raw = data[_META]
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"metadata is a {raw.dtype} array of shape {raw.shape}")
        meta = json.loads(raw.tobytes().decode())
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"metadata format is not {_FORMAT!r}")
        keys = meta.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("metadata has no list of array names")
    except (ValueError, UnicodeDecodeError) as e:
        raise _corrupted(path, f"unreadable metadata: {e}") from None
    if _HISTORY not in data:
        raise _corrupted(path, "no loss history")
    hist = data[_HISTORY]
    if hist.dtype != np.float32 or hist.ndim != 1:
        raise _corrupted(path, f"the loss history is a {hist.dtype} array of shape {hist.shape}, "
                               "not a float32 vector")
    have = {k for k in data if k not in (_META, _HISTORY) and not k.startswith(_EXTRA)}
    if have != set(keys):
        extra, missing = sorted(have - set(keys)), sorted(set(keys) - have)
        raise _corrupted(path, f"the arrays present differ from the metadata's list (extra: {extra}, "
                               f"missing: {missing})")
    for k in keys + [k for k in data if k.startswith(_EXTRA)]:
        if data[k].dtype.kind not in "biufc":
            raise _corrupted(path, f"{k} is not a numeric array (dtype {data[k].dtype})")


def peek(path):
    """``(steps, info)`` of the checkpoint at ``path`` without a template: the number of steps
    its loss history holds and the ``info`` dict it was saved with (None if none). Raises
    :class:`CheckpointError` naming the file for a missing, corrupted or foreign file."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    data = _read(path)
    _check_structure(path, data)
    info = json.loads(data[_META].tobytes().decode()).get("info")
    if info is not None and not isinstance(info, dict):
        raise _corrupted(path, "its info is not a dict")
    return int(data[_HISTORY].shape[0]), info


def load(path, template, extras=None):
    """``(state, history)`` from ``path``, shaped like ``template`` (e.g. ``kernel.init(params)``).

    ``extras``: names of arrays saved with ``save(..., extras=)``; then ``(state, history,
    {name: array})`` is returned, and a missing name is a CheckpointError.

    Raises :class:`CheckpointError` (naming the file and what is wrong) for a missing file,
    a corrupted one, or one written for another model or optimizer.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    data = _read(path)
    _check_structure(path, data)
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for p, leaf in flat:
        k = jax.tree_util.keystr(p)
        if k not in data:
            raise CheckpointError(f"checkpoint {path!r} has no array for {k}: it was written for "
                                  "another model or optimizer")
        arr = data[k]
        if _is_key(leaf):
            want = jax.random.key_data(leaf)
            want_shape, want_dtype = tuple(want.shape), want.dtype
        else:
            want_shape, want_dtype = tuple(np.shape(leaf)), jax.numpy.asarray(leaf).dtype
        if arr.shape != want_shape or arr.dtype != want_dtype:
            raise CheckpointError(f"checkpoint {path!r}: {k} has shape {arr.shape} and dtype "
                                  f"{arr.dtype}, the state expects {want_shape} {want_dtype}")
        if _is_key(leaf):
            leaves.append(jax.random.wrap_key_data(arr, impl=jax.random.key_impl(leaf)))
        else:
            leaves.append(jax.numpy.asarray(arr))
    state = jax.tree_util.tree_unflatten(treedef, leaves)
    if extras is None:
        return state, data[_HISTORY]
    missing = [name for name in extras if _EXTRA + name not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} has no {', '.join(missing)}: it was written by another "
                              "kind of run")
    return state, data[_HISTORY], {name: data[_EXTRA + name] for name in extras}
