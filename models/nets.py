"""Plain-JAX multilayer perceptrons: parameters are pytrees, initialization takes explicit keys.

>>> import jax, jax.numpy as jnp
>>> params = mlp_init(jax.random.key(0), [4, 8, 3])
>>> [(l["w"].shape, l["b"].shape) for l in params]
[((4, 8), (8,)), ((8, 3), (3,))]
>>> mlp_apply(params, jnp.ones((5, 4))).shape
(5, 3)
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = ["dense_init", "dense_apply", "mlp_init", "mlp_apply", "num_params"]


def dense_init(key, n_in: int, n_out: int, *, scale: float = 1.0, dtype=jnp.float32) -> dict:
    """A dense layer ``{"w": (n_in, n_out), "b": (n_out,)}`` with LeCun-normal weights."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"dense_init: layer sizes must be positive, got {n_in} -> {n_out}")
    w = jax.random.normal(key, (n_in, n_out), dtype) * (scale / jnp.sqrt(n_in)).astype(dtype)
    return {"w": w, "b": jnp.zeros((n_out,), dtype)}


def dense_apply(layer: dict, x):
    return x @ layer["w"] + layer["b"]


def mlp_init(key, sizes: Sequence[int], *, final_scale: float = 1.0, dtype=jnp.float32) -> list:
    """Layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` as a list of dense layers.

    ``final_scale`` scales the last layer's initial weights (small values start a VAE's
    guide near the prior and its decoder near the mean image).
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"mlp_init: need at least an input and an output size, got {sizes}")
    keys = jax.random.split(key, len(sizes) - 1)
    last = len(sizes) - 2
    return [dense_init(k, a, b, scale=final_scale if i == last else 1.0, dtype=dtype)
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))]


def mlp_apply(params: list, x, activation: Callable = jnp.tanh):
    """Apply the MLP; ``activation`` between layers, none after the last."""
    for layer in params[:-1]:
        x = activation(dense_apply(layer, x))
    return dense_apply(params[-1], x)


def num_params(params) -> int:
    return sum(int(jnp.size(p)) for p in jax.tree_util.tree_leaves(params))
