"""The :class:`Dataset` result type and binarization.

Private module: the public names are re-exported by :mod:`ppl.models.data`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._idx import DataError


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A data set split into train, validation and test parts (numpy arrays, host memory).

    Attributes:
      name: the data set's name, e.g. ``"digits"`` or ``"mnist"``.
      x_train, x_valid, x_test: images, ``float32`` of shape ``(N, D)`` with
        ``D = prod(image_shape)``; values in ``[0, 1]`` (exactly 0 or 1 once binarized).
      y_train, y_valid, y_test: labels, ``int32`` of shape ``(N,)`` in ``[0, num_classes)``.
      image_shape: the shape of one image, e.g. ``(8, 8)`` or ``(28, 28)``.
      num_classes: the number of label values.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, ...]
    num_classes: int = 10

    def __post_init__(self):
        dim = int(np.prod(self.image_shape))
        for split in ("train", "valid", "test"):
            x, y = getattr(self, "x_" + split), getattr(self, "y_" + split)
            if x.ndim != 2 or x.shape[1] != dim or y.shape != (x.shape[0],):
                raise DataError(
                    f"Dataset {self.name!r}: x_{split} has shape {x.shape} and y_{split} "
                    f"{y.shape}; expected (N, {dim}) and (N,) for images of shape "
                    f"{self.image_shape}. Flatten images with x.reshape(len(x), -1)."
                )

    @property
    def num_features(self) -> int:
        """The number of pixels per image, ``D = prod(image_shape)``."""
        return int(np.prod(self.image_shape))

    def images(self, x: Any) -> Any:
        """Return flattened images ``x`` of shape ``(..., D)`` reshaped to ``(..., *image_shape)``.

        Works on numpy and JAX arrays (also under ``jit``); e.g. ``(N, 64) -> (N, 8, 8)``.
        """
        return x.reshape(*x.shape[:-1], *self.image_shape)

    def binarized(self, method: str = "threshold", *, threshold: float = 0.5, seed: int = 0
                  ) -> Dataset:
        """Return a copy with statically binarized images (``float32`` of 0s and 1s).

        Args:
          method: ``"threshold"``: a pixel is 1 where its intensity is ``> threshold``.
            ``"bernoulli"``: one fixed draw, pixel = 1 where ``u < intensity`` with ``u``
            uniform ``float32`` from ``numpy.random.default_rng([seed, s]).random``, ``s`` =
            0, 1, 2 for train, valid, test (numpy's PCG64: stable across machines, and fast;
            it does not depend on the JAX version).
          threshold: the cut for ``"threshold"``.
          seed: the seed for ``"bernoulli"``; the same seed and split sizes give the same
            images (a different ``n_valid`` moves images between splits and so redraws them).

        Labels are unchanged. For dynamic binarization use :func:`binarize` per minibatch.
        """
        if method == "threshold":
            fn = [lambda x: binarize_static(x, threshold=threshold)] * 3
        elif method == "bernoulli":
            def draw(x, s):
                u = np.random.default_rng([seed, s]).random(x.shape, dtype=np.float32)
                return (u < x).astype(np.float32)

            fn = [lambda x, s=s: draw(x, s) for s in range(3)]
        else:
            raise ValueError(
                f"Unknown binarization method {method!r}; valid: 'threshold', 'bernoulli'. "
                "For dynamic binarization call binarize(key, x) on each minibatch instead."
            )
        return dataclasses.replace(
            self, x_train=fn[0](self.x_train), x_valid=fn[1](self.x_valid),
            x_test=fn[2](self.x_test))

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, image_shape={self.image_shape}, "
                f"train={len(self.x_train)}, valid={len(self.x_valid)}, "
                f"test={len(self.x_test)}, num_classes={self.num_classes})")


def _check_counts(name: str, n: int, *, n_valid: int, n_test: int = 0) -> None:
    for arg, value in (("n_valid", n_valid), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{arg} must be a non-negative integer; got {value!r}.")
    if n_valid + n_test >= n:
        raise ValueError(
            f"{name}: n_valid={n_valid} and n_test={n_test} leave no training data out of "
            f"{n} examples; choose smaller values."
        )


def binarize(key: jax.Array, images: Any) -> jax.Array:
    """Dynamic binarization: each pixel ~ Bernoulli(intensity), independently.

    Call it with a fresh key on every minibatch (e.g. ``jax.random.split`` of the step key), so
    the model sees a new binary sample of each image each time. Works under ``jit``/``vmap``.

    Args:
      key: a JAX PRNG key.
      images: floating-point intensities in ``[0, 1]``, any shape.

    Returns:
      A JAX array of the same shape and dtype as ``images`` holding 0.0 and 1.0.
    """
    images = jnp.asarray(images)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"binarize expects floating-point intensities in [0, 1]; got dtype {images.dtype}. "
            "Scale raw pixels first (x / 255.0); the loaders already return [0, 1] floats."
        )
    return jax.random.bernoulli(key, images).astype(images.dtype)


def binarize_static(images: Any, *, threshold: float = 0.5) -> np.ndarray:
    """Static binarization by a fixed threshold.

    Returns:
      A numpy ``float32`` array of ``images``' shape: 1.0 where ``images > threshold``, else 0.0.
    """
    return (np.asarray(images) > threshold).astype(np.float32)
