"""A VAE whose encoder and decoder are Equinox modules: networks are pytrees, programs stay ppl.

The parameters given to ``fit`` are the arrays of the modules (``eqx.partition``); the
programs rebuild the modules with ``eqx.combine``. Needs ``pip install equinox``.

    .venv/bin/python examples/flax_or_equinox_vae.py [--steps 1000] [--out DIR]
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
import optax

import ppl
from ppl.models import _plots, data
from ppl.models.losses import make_loss
from ppl.transforms import expectation
from ppl.transforms import objectives as O
from ppl.transforms.fit import fit

try:
    import equinox as eqx
except ImportError:
    sys.exit("this example needs equinox: .venv/bin/pip install equinox")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", default="runs/example_equinox")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    ds = data.load("digits")
    L, H = (3, 16) if a.tiny else (10, 200)
    k1, k2 = jax.random.split(jax.random.key(0))
    enc = eqx.nn.MLP(64, 2 * L, H, depth=1, activation=jnp.tanh, key=k1)
    dec = eqx.nn.MLP(L, 64, H, depth=1, activation=jnp.tanh, key=k2)
    (enc_p, enc_s), (dec_p, dec_s) = eqx.partition(enc, eqx.is_array), eqx.partition(dec, eqx.is_array)

    def model(theta, x):
        z = ppl.sample("z", nd.Normal(jnp.zeros((x.shape[0], L)), 1.0).to_event(1))
        logits = jax.vmap(eqx.combine(theta, dec_s))(z)
        ppl.sample("x", nd.Bernoulli(logits=logits).to_event(1), obs=x.astype(jnp.int32))

    def guide(phi, x):
        loc, raw = jnp.split(jax.vmap(eqx.combine(phi, enc_s))(x), 2, -1)
        ppl.sample("z", nd.Normal(loc, jax.nn.softplus(raw) + 1e-4).to_event(1))

    E = expectation(O.elbo(model, guide))
    params = {"theta": dec_p, "phi": enc_p}
    xt = jnp.asarray(data.binarize_static(ds.x_test))
    print(E.plan((dec_p, xt[:64]), (enc_p, xt[:64])))
    loss = make_loss(E, per_example=False, binarized=True)  # params = {"theta": ..., "phi": ...}
    res = fit(loss, optax.adam(1e-3), params, key=jax.random.key(1), num_steps=a.steps,
              data=jnp.asarray(ds.x_train), batch_size=64, chunk=min(250, max(a.steps, 1)))
    elbo = E.estimate(jax.random.key(2), (res.params["theta"], xt), (res.params["phi"], xt)) / xt.shape[0]
    print(f"test ELBO (one sample) {float(elbo):.3f}")
    os.makedirs(a.out, exist_ok=True)
    print(_plots.learning_curve(os.path.join(a.out, "equinox_learning_curve.png"), res.history))


if __name__ == "__main__":
    main()
