"""Pixel-wise gradient clipping against its definition: identity forward, clipped cotangent back."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.backends import optim


def _vjp(x, ct, **kw):
    y, pull = jax.vjp(lambda x: optim.pixel_grad_clip(x, **kw), x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    return np.asarray(pull(ct)[0])


@pytest.mark.parametrize("soft", [False, True])
def test_matches_definition_per_pixel_channels(soft):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)))
    ct = rng.normal(size=(2, 4, 4, 3)) * rng.choice([0.01, 1.0, 50.0], size=(2, 4, 4, 1))
    c = 0.3
    got = _vjp(x, jnp.asarray(ct), clip_value=c, channel_axis=-1, soft=soft)
    mag = np.abs(ct).max(axis=-1, keepdims=True)  # ||g_p||_inf over the pixel's channels
    expected = c * ct / (mag + c) if soft else ct * np.minimum(1.0, c / mag)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    if not soft:
        small = mag[..., 0] <= c
        assert small.any() and (~small).any()
        np.testing.assert_allclose(got[small], ct[small], rtol=1e-6)  # untouched below the threshold
        assert np.all(np.abs(got).max(-1) <= c * (1 + 1e-6))
        # the direction within a pixel is kept (not per-channel clamping)
        big = np.argwhere(~small)[0]
        g, h = got[tuple(big)], ct[tuple(big)]
        np.testing.assert_allclose(g / np.linalg.norm(g), h / np.linalg.norm(h), rtol=1e-5)


def test_every_entry_a_pixel_and_channels_first():
    ct = jnp.array([[0.05, -2.0, 0.0, 7.0]])
    np.testing.assert_allclose(_vjp(jnp.zeros((1, 4)), ct, clip_value=0.1), [[0.05, -0.1, 0.0, 0.1]], rtol=1e-6)
    ct2 = jnp.array([[[1.0], [-4.0]]])  # NCHW-like: channels on axis 1
    np.testing.assert_allclose(_vjp(jnp.zeros((1, 2, 1)), ct2, clip_value=2.0, channel_axis=1),
                               [[[0.5], [-2.0]]], rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="clip_value="):
        optim.pixel_grad_clip(jnp.ones(3), 0.0)
    with pytest.raises(ValueError, match="channel_axis="):
        optim.pixel_grad_clip(jnp.ones(3), 0.1, channel_axis=2)
