"""Data sets for the generative models: the embedded 8x8 digits and MNIST.

Every loader returns a :class:`Dataset` of numpy arrays: images as ``float32`` in ``[0, 1]``
flattened to ``(N, D)``, labels as ``int32`` of shape ``(N,)``, with train/validation/test
splits chosen by a fixed seed (digits) or by position (MNIST).

* :func:`load_digits` - scikit-learn's bundled 8x8 digits (1,797 images; offline).
* :func:`load_mnist` - the standard MNIST IDX files from a folder, checksums verified;
  optionally downloaded into a cache folder first.
* :func:`load` - ``load("digits")`` / ``load("mnist", path=...)``.
* :func:`binarize` - dynamic binarization with an explicit JAX key (resample every step).
* :func:`binarize_static` / :meth:`Dataset.binarized` - static binarization.
* :func:`batches` / :func:`batch_indices` - shuffled minibatches from a key.

Example::

  >>> import jax
  >>> from ppl.models import data
  >>> ds = data.load("digits")
  >>> ds.x_train.shape, ds.x_train.dtype, ds.image_shape
  ((1257, 64), dtype('float32'), (8, 8))
  >>> ds.images(ds.x_test).shape
  (360, 8, 8)
  >>> for (x, y) in data.batches(jax.random.key(0), (ds.x_train, ds.y_train), 100):
  ...     pass  # 12 batches of 100; the 57 left over differ from epoch to epoch
  >>> x.shape
  (100, 64)

The sharp edges are listed in ``models/README.md`` (Data sets).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._dataset import Dataset, _check_counts, binarize, binarize_static
from ._idx import DataError, DataNotFoundError, read_idx
from ._mnist import (
    DEFAULT_MNIST_URL,
    MNIST_DIR_ENV,
    MNIST_FILES,
    MNIST_MD5,
    MNIST_URL_ENV,
    load_mnist,
    mnist_dir,
)

__all__ = [
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "DEFAULT_MNIST_URL",
    "MNIST_DIR_ENV",
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_URL_ENV",
    "NAMES",
    "batch_indices",
    "batches",
    "binarize",
    "binarize_static",
    "load",
    "load_digits",
    "load_mnist",
    "mnist_dir",
    "read_idx",
]

# ---------------------------------------------------------------------------------------------
# The embedded digits


def load_digits(*, n_valid: int = 180, n_test: int = 360, seed: int = 0) -> Dataset:
    """Load scikit-learn's bundled 8x8 digits (1,797 images, no download).

    Args:
      n_valid: the number of validation images.
      n_test: the number of test images; the remaining ``1797 - n_valid - n_test`` train.
      seed: the split is ``numpy.random.default_rng(seed).permutation(1797)`` cut into
        train, valid, test in that order; a fixed seed gives the same split on every machine.

    Returns:
      A :class:`Dataset` named ``"digits"``: images ``float32`` in ``[0, 1]`` (pixel / 16)
      of shape ``(N, 64)``, ``image_shape=(8, 8)``; labels ``int32`` in ``[0, 10)``.
      With the defaults: 1,257 train, 180 valid, 360 test.
    """
    try:
        from sklearn.datasets import load_digits as _sklearn_digits
    except ImportError:
        raise ImportError(
            "load_digits needs scikit-learn, which bundles the 8x8 digits: "
            "pip install scikit-learn (or pip install 'ppl[examples]')."
        ) from None
    raw = _sklearn_digits()
    x = (np.asarray(raw.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(raw.target, dtype=np.int32)
    n = len(x)
    _check_counts("digits", n, n_valid=n_valid, n_test=n_test)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = n - n_valid - n_test
    tr, va, te = perm[:n_train], perm[n_train:n_train + n_valid], perm[n_train + n_valid:]
    return Dataset("digits", x[tr], y[tr], x[va], y[va], x[te], y[te], image_shape=(8, 8))


# ---------------------------------------------------------------------------------------------
# Loading by name


NAMES = ("digits", "mnist")


def load(name: str, **kwargs: Any) -> Dataset:
    """Load a data set by name: ``"digits"`` (:func:`load_digits`) or ``"mnist"``
    (:func:`load_mnist`); ``kwargs`` go to that loader. Returns a :class:`Dataset`."""
    loaders = {"digits": load_digits, "mnist": load_mnist}
    if name not in loaders:
        raise ValueError(
            f"Unknown data set {name!r}; valid names: "
            + ", ".join(repr(n) for n in NAMES) + "."
        )
    return loaders[name](**kwargs)


# ---------------------------------------------------------------------------------------------
# Minibatches


def batch_indices(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """One epoch of shuffled minibatch indices, for ``jit``/``lax.scan`` training loops.

    Returns:
      An ``int32`` JAX array of shape ``(num_examples // batch_size, batch_size)``: a random
      permutation of ``range(num_examples)`` cut into rows; the ``num_examples % batch_size``
      left-over examples (a different random subset each epoch) are dropped.
    """
    _check_batch_size(num_examples, batch_size, drop_remainder=True)
    num_batches = num_examples // batch_size
    perm = jax.random.permutation(key, num_examples)[: num_batches * batch_size]
    return perm.reshape(num_batches, batch_size).astype(jnp.int32)


def batches(key: jax.Array, data: Any, batch_size: int, *, drop_remainder: bool = True
            ) -> Iterator[Any]:
    """Shuffled minibatches for one epoch.

    Args:
      key: a JAX PRNG key; the order is a function of the key only (use a new key per epoch).
      data: an array, or a pytree (tuple, dict) of arrays sharing the leading dimension ``N``.
      batch_size: the number of examples per batch.
      drop_remainder: if true, drop the last ``N % batch_size`` examples so every batch has
        the same shape (no recompilation under ``jit``); if false, the last batch is smaller.

    Returns:
      An iterator of ``ceil`` or ``floor(N / batch_size)`` pytrees with ``data``'s structure,
      each leaf indexed along axis 0 (numpy leaves stay numpy, JAX leaves stay JAX).
    """
    leaves, treedef = jax.tree.flatten(data)
    if not leaves:
        raise ValueError("batches got no arrays; pass an array or a tuple of arrays.")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "batches needs arrays with the same leading dimension (the examples); got shapes "
            f"{[np.shape(leaf) for leaf in leaves]}."
        )
    (n,) = sizes
    _check_batch_size(n, batch_size, drop_remainder=drop_remainder)
    perm = np.asarray(jax.random.permutation(key, n))
    stop = n - n % batch_size if drop_remainder else n

    def generate():
        for start in range(0, stop, batch_size):
            index = perm[start:start + batch_size]
            yield treedef.unflatten([leaf[index] for leaf in leaves])

    return generate()


def _check_batch_size(n: int, batch_size: int, *, drop_remainder: bool) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if drop_remainder and batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {n} examples, so dropping the "
            "remainder leaves no batch at all. Use a smaller batch_size, or "
            "drop_remainder=False for one smaller batch."
        )
