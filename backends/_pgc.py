"""Pixel-wise gradient clipping (PGC; Pan, Lu, Zhu, Zhang, ICLR 2024; reference ``fudan-zvg/PGC-3D``).

An identity on an image (e.g. a decoder's output) whose *cotangent* is clipped pixel by pixel.
With ``g_p`` the cotangent of pixel ``p`` (its channels) and ``c = clip_value``:

- hard: ``g_p * min(1, c / ||g_p||_inf)`` (each pixel's largest channel cotangent is at most c;
  the direction of ``g_p`` is kept), the reference's "pixel-wise clip";
- soft: ``c * g_p / (||g_p||_inf + c)`` (a smooth saturation; always shrinks), the reference's
  per-pixel normalised variant.

Unlike ``optax.clip_by_global_norm``, which acts on parameter gradients after the whole
backward pass, PGC acts where the cotangent enters the network, so a few pixels with huge
cotangents cannot dominate what reaches the parameters.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import _checks


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _pgc(x, clip_value, channel_axis, soft):
    return x


def _pgc_fwd(x, clip_value, channel_axis, soft):
    return x, None


def _pgc_bwd(clip_value, channel_axis, soft, _, g):
    mag = jnp.abs(g) if channel_axis is None else jnp.max(jnp.abs(g), axis=channel_axis, keepdims=True)
    c = jnp.asarray(clip_value, g.dtype)
    if soft:
        out = c * g / (mag + c)
    else:
        out = g * jnp.minimum(1, c / jnp.where(mag > 0, mag, 1))
    return (out.astype(g.dtype),)


_pgc.defvjp(_pgc_fwd, _pgc_bwd)


def pixel_grad_clip(x, clip_value: float = 0.1, *, channel_axis: int | None = None, soft: bool = False):
    """Identity on ``x`` whose cotangent is clipped per pixel (see the module docstring).

    ``channel_axis``: the axis holding a pixel's channels (e.g. -1 for NHWC, 1 for NCHW); None
    (default) makes every entry its own pixel, as for grayscale or flattened images.
    ``soft=True`` selects the soft variant. ``clip_value`` must be > 0.
    """
    _checks.in_range("pixel_grad_clip", "clip_value", clip_value, 0.0, float("inf"), lo_open=True)
    if channel_axis is not None:
        if not -jnp.ndim(x) <= channel_axis < jnp.ndim(x):
            raise ValueError(f"pixel_grad_clip(channel_axis={channel_axis}): out of range for an array of "
                             f"shape {jnp.shape(x)}")
        channel_axis = channel_axis % jnp.ndim(x)
    return _pgc(x, float(clip_value), channel_axis, bool(soft))
