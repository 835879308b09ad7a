"""Discrete VAE: gradient variance of every estimator at the same parameters, and training curves.

    .venv/bin/python examples/dvae_estimators.py [--steps 500] [--estimates 100] [--latent 8] [--out DIR]
"""
import argparse
import os

import jax
import jax.numpy as jnp
import optax

from ppl.models import _plots, data, dvae
from ppl.models.losses import make_loss
from ppl.transforms import expectation
from ppl.transforms import objectives as O
from ppl.transforms.fit import fit


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--estimates", type=int, default=100, help="independent gradient estimates per estimator")
    ap.add_argument("--latent", type=int, default=8)
    ap.add_argument("--out", default="runs/example_dvae")
    ap.add_argument("--tiny", action="store_true", help="tiny networks, 3 estimators (smoke test)")
    a = ap.parse_args()
    ds = data.load("digits")
    cfg = dvae.DVAEConfig(data_dim=64, latent_dim=3 if a.tiny else a.latent, hidden=(8,) if a.tiny else (64,))
    params = dvae.init_params(jax.random.key(0), cfg, data_mean=ds.x_train.mean(0))
    batch = jnp.asarray(ds.x_train[:32])
    suite = dvae.estimator_suite(cfg.latent_dim)
    if a.tiny:
        suite = dict(list(suite.items())[:3])
    curves = {}
    print(f"{'estimator':28s} {'var total':>12s} {'var phi':>12s} {'var theta':>12s} {'final loss':>10s}")
    for label, (objective, est) in suite.items():
        obj = O.vimco(dvae.model, dvae.guide, 4) if objective == "vimco" else O.elbo(dvae.model, dvae.guide)
        loss = make_loss(expectation(obj, estimators=est), binarized=True)
        v = dvae.gradient_variance(loss, params, batch, jax.random.key(1), 4 if a.tiny else a.estimates)
        res = fit(loss, optax.adam(1e-3), params, key=jax.random.key(2), num_steps=a.steps,
                  data=jnp.asarray(ds.x_train), batch_size=8 if a.tiny else 32, chunk=min(250, max(a.steps, 1)))
        curves[label] = res.history
        final = float(res.history[-50:].mean()) if len(res.history) else float("nan")
        print(f"{label:28s} {v['total']:12.4g} {v['phi']:12.4g} {v['theta']:12.4g} {final:10.3f}", flush=True)
    os.makedirs(a.out, exist_ok=True)
    print(_plots.learning_curve(os.path.join(a.out, "dvae_curves.png"), None, curves=curves, label="loss"))


if __name__ == "__main__":
    main()
