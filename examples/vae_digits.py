"""Train a VAE on the 8x8 digits with the ELBO (or IWAE) and report the test log-likelihood.

    .venv/bin/python examples/vae_digits.py [--steps 2000] [--objective iwae --particles 5] [--out DIR]
"""
import argparse
import os

import jax
import jax.numpy as jnp
import optax

from ppl.models import _plots, data, vae
from ppl.models.losses import make_loss
from ppl.transforms import expectation
from ppl.transforms import objectives as O
from ppl.transforms.fit import fit


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--objective", choices=["elbo", "iwae"], default="elbo")
    ap.add_argument("--particles", type=int, default=5)
    ap.add_argument("--out", default="runs/example_vae")
    ap.add_argument("--tiny", action="store_true", help="tiny networks and evaluation (smoke test)")
    a = ap.parse_args()
    ds = data.load("digits")
    cfg = vae.VAEConfig(data_dim=64, latent_dim=3 if a.tiny else 10, hidden=(16,) if a.tiny else (200,))
    params = vae.init_params(jax.random.key(0), cfg, data_mean=ds.x_train.mean(0))
    obj = O.elbo(vae.model, vae.guide) if a.objective == "elbo" else O.iwae(vae.model, vae.guide, a.particles)
    E = expectation(obj)
    xt = jnp.asarray(data.binarize_static(ds.x_test))
    print(E.plan((params["theta"], xt[:64]), (params["phi"], xt[:64])))
    loss = make_loss(E, per_example=a.objective != "elbo", binarized=True)
    res = fit(loss, optax.adam(1e-3), params, key=jax.random.key(1), num_steps=a.steps,
              data=jnp.asarray(ds.x_train), batch_size=64, chunk=min(250, max(a.steps, 1)))
    ll = vae.log_likelihood(jax.random.key(2), res.params, xt, 10 if a.tiny else 1000)
    print(f"test ELBO {float(vae.elbo(jax.random.key(3), res.params, xt)):.3f}  test log p(x) {float(ll.mean()):.3f}")
    os.makedirs(a.out, exist_ok=True)
    print(_plots.learning_curve(os.path.join(a.out, "vae_learning_curve.png"), res.history))


if __name__ == "__main__":
    main()
