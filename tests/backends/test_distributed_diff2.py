"""DIFF2 and DP-GD (ppl.backends.distributed): the privacy accounting against dp-accounting
and independent RDP bounds, the rounds against a NumPy implementation of the definition
(restart and difference rounds, per-example clipping, adaptive radius), the noise's standard
deviation, DP-GD against optax.contrib.differentially_private_aggregate (dpsgd without its deprecated seed), and bad input. The mesh: test_distributed_mesh.py."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

from ppl.backends.distributed import diff2, diff2_noise_multipliers, dp_epsilon, dp_gd
from ppl.models.federated import diabetes_clients, squared_loss

from .._stats import Z


def small(n_clients=4, m=5, seed=0):
    d = diabetes_clients(8)
    return {k: v[:n_clients, :m] for k, v in d.items()}


def np_clipped_mean(s, c):
    norms = np.linalg.norm(s, axis=1, keepdims=True)
    return np.mean(s * np.minimum(1.0, c / np.maximum(norms, 1e-300)), 0)


def np_grads(w, a, y):  # per-example gradients of (1/2)(a.w - y)^2
    return (a @ w - y)[:, None] * a


def reference_noiseless(data, w0, eta, C1, C2, T, rounds):
    """The paper's rounds with zero noise, one client after the other."""
    P = data["a"].shape[0]
    x, prev, v, out = w0.copy(), w0.copy(), None, []
    for r in range(rounds):
        if r % T == 0:
            v = sum(np_clipped_mean(np_grads(x, data["a"][p], data["y"][p]), C1) for p in range(P)) / P
        else:
            rad = C2 * np.linalg.norm(x - prev)
            v = v + sum(np_clipped_mean(np_grads(x, data["a"][p], data["y"][p])
                                        - np_grads(prev, data["a"][p], data["y"][p]), rad) for p in range(P)) / P
        prev, x = x, x - eta * v
        out.append(x)
    return np.array(out)


def test_noise_multiplier_gives_the_stated_epsilon():
    for eps in (3.0, 5.0):
        for period, ratio in ((1, 1.0), (5, 3.0)):
            s1, s2 = diff2_noise_multipliers(eps, 1e-5, 100, period=period, ratio=ratio)
            assert s2 == pytest.approx(ratio * s1)
            got = dp_epsilon(s1, 100, 1e-5, period=period, diff_noise_multiplier=s2)
            assert eps - 1e-4 <= got <= eps + 1e-9  # calibrated to dp-accounting's tolerance, never above
            assert dp_epsilon(0.99 * s1, 100, 1e-5, period=period, diff_noise_multiplier=0.99 * s2) > eps
    # independent check for DP-GD: R Gaussian mechanisms have RDP R a / (2 s^2); the classic
    # conversion (Mironov 2017) bounds epsilon above, the improved one (Canonne et al. 2020,
    # minimized over a continuum of orders) below whatever grid of orders the accountant uses
    s, R, delta = diff2_noise_multipliers(3.0, 1e-5, 100)[0], 100, 1e-5
    a = np.linspace(1.01, 400, 200000)
    rdp = R * a / (2 * s ** 2)
    classic = np.min(rdp + math.log(1 / delta) / (a - 1))
    improved = np.min(rdp + np.log((a - 1) / a) - (math.log(delta) + np.log(a)) / (a - 1))
    assert improved - 1e-6 <= 3.0 <= classic
    assert classic < 3.6  # the bounds are close: the accountant's answer is not arbitrary


def test_rounds_follow_the_definition_without_noise():
    with jax.enable_x64(True):
        data = small()
        w0 = np.linspace(-0.5, 0.5, 11)
        for T, C1, C2 in ((3, 2.0, 3.0), (1, 1.0, None)):  # clipping active in both kinds of rounds
            if T == 1:
                m = dp_gd(squared_loss, stepsize=0.1, noise_multiplier=0.0, clip=C1)
            else:
                m = diff2(squared_loss, stepsize=0.1, noise_multiplier=0.0, clip=C1, clip_diff=C2, period=T)
            st, info = m.run(jax.random.key(0), m.init(None, jnp.asarray(w0), data), data, 7)
            ref = reference_noiseless(data, w0, 0.1, C1, C2, T, 7)
            xs = []
            st = m.init(None, jnp.asarray(w0), data)
            for _ in range(7):
                st, _ = m.step(jax.random.key(0), st, data)
                xs.append(np.asarray(st.params))
            np.testing.assert_allclose(np.array(xs), ref, rtol=0, atol=1e-12)
            assert np.asarray(info.restart).tolist() == [r % T == 0 for r in range(7)]
            if T == 3:  # the adaptive radius C_2 ||x_{r-1} - x_{r-2}||
                np.testing.assert_allclose(np.asarray(info.radius)[1], C2 * np.linalg.norm(ref[0] - w0), rtol=1e-12)
                g = np.concatenate([np_grads(w0, data["a"][p], data["y"][p]) for p in range(4)])
                assert np.max(np.linalg.norm(g, axis=1)) > C1  # the test exercises clipping
        assert np.asarray(info.bytes_sent).tolist() == [4 * 11 * 8] * 7  # d float64 per client


def test_noise_has_the_stated_standard_deviation():
    """Per round ``xi ~ N(0, (sigma 2 C / n)^2 I)``: sum (xi / std)^2 over N draws x d is chi-square
    with N d degrees of freedom; its mean 1 +- Z sqrt(2 / (N d)); a 10% wrong std must fail."""
    with jax.enable_x64(True):
        data = small()
        n, w0 = 20, jnp.linspace(-0.5, 0.5, 11)
        kw = dict(stepsize=0.1, clip=2.0, clip_diff=3.0, period=3)
        noisy = diff2(squared_loss, noise_multiplier=1.5, diff_noise_multiplier=4.0, **kw)
        clean = diff2(squared_loss, noise_multiplier=0.0, diff_noise_multiplier=0.0, **kw)
        s0 = noisy.init(None, w0, data)
        s1, _ = clean.step(jax.random.key(0), s0, data)  # a state before a difference round
        N = 400
        for st, sigma in ((s0, 1.5), (s1, 4.0)):
            ref, info = clean.step(jax.random.key(0), st, data)
            rad = float(info.radius)
            draws = jax.vmap(lambda k: noisy.step(k, st, data)[0].v)(jax.random.split(jax.random.key(1), N))
            xi = np.asarray(draws) - np.asarray(ref.v)
            std = sigma * 2 * rad / n
            stat = np.mean((xi / std) ** 2)
            tol = Z * math.sqrt(2 / xi.size)
            assert abs(stat - 1) <= tol, (stat, tol)
            assert abs(np.mean((xi / (1.1 * std)) ** 2) - 1) > tol  # negative control


def test_dp_gd_equals_optax_dpsgd_without_noise():
    with jax.enable_x64(True):
        data = small()
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in data.items()}
        w = jnp.linspace(-0.5, 0.5, 11)
        m = dp_gd(squared_loss, stepsize=0.1, noise_multiplier=0.0, clip=1.0)
        st, _ = m.run(jax.random.key(0), m.init(None, w, data), data, 10)
        opt = optax.chain(optax.contrib.differentially_private_aggregate(1.0, 0.0, key=jax.random.key(0)), optax.sgd(0.1))
        state = opt.init(w)
        per_example = jax.vmap(jax.grad(lambda p, a, y: squared_loss(None, p, {"a": a[None], "y": y[None]})),
                               (None, 0, 0))
        for _ in range(10):
            u, state = opt.update(per_example(w, flat["a"], flat["y"]), state, w)
            w = optax.apply_updates(w, u)
        np.testing.assert_allclose(np.asarray(st.params), np.asarray(w), atol=1e-12)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="clip_diff"):
        diff2(squared_loss, stepsize=0.1, noise_multiplier=1.0, clip=1.0, clip_diff=None, period=3)
    with pytest.raises(ValueError, match="period"):
        diff2(squared_loss, stepsize=0.1, noise_multiplier=1.0, clip=1.0, clip_diff=1.0, period=0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        dp_gd(squared_loss, stepsize=0.1, noise_multiplier=-1.0, clip=1.0)
    with pytest.raises(ValueError, match="clip"):
        dp_gd(squared_loss, stepsize=0.1, noise_multiplier=1.0, clip=0.0)
    with pytest.raises(ValueError, match="delta"):
        diff2_noise_multipliers(3.0, 1.5, 100)
    with pytest.raises(ValueError, match="epsilon"):
        diff2_noise_multipliers(-3.0, 1e-5, 100)
    with pytest.raises(ValueError, match="rounds"):
        dp_epsilon(1.0, 0, 1e-5)
    with pytest.raises(ValueError, match="examples"):
        dp_gd(squared_loss, stepsize=0.1, noise_multiplier=1.0, clip=1.0).init(None, jnp.zeros(3), {"a": jnp.ones(4)})
