"""The per-example importance log weight shared by the VAE and the discrete VAE."""
from __future__ import annotations

import jax

import ppl


def log_weight(model, guide, key, params, x):
    """``log p(x, z) - log q(z | x)`` for one draw ``z ~ q`` per example; ``x`` (B, D) -> (B,)."""
    def one(k, xi):
        tr = ppl.simulate(guide)(k, params["phi"], xi[None])
        lp, _ = ppl.assess(model)(tr.choices, params["theta"], xi[None])
        return lp - tr.score

    return jax.vmap(one)(jax.random.split(key, x.shape[0]), x)
