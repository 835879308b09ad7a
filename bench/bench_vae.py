"""PLDI 2024 (ADEV/programmable VI) Table 1 setup: minibatch ELBO value-and-gradient of a VAE.

10-d diagonal Normal latent, decoder 10-200-784, encoder 784-200-20 (tanh), reparameterized
Gaussian guide, Bernoulli likelihood. One jitted ``value_and_grad`` per system:

- ppl: ``expectation(objectives.elbo(model, guide)).estimate`` under ``jax.value_and_grad``;
- hand-written JAX: the same networks and math written directly;
- NumPyro: ``Trace_ELBO().loss`` with the same networks (parameters passed as arguments).

Per-call time: median over alternating rounds (each round times ``--reps`` back-to-back calls
of each system, then ``block_until_ready``), so drift of the machine hits all three alike;
compile: ``lower().compile()``.

Run: ``.venv/bin/python bench/bench_vae.py [--rounds 15] [--reps 10] [--batches 64,128,...]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as nd

from ppl.models import data, vae
from ppl.transforms import expectation
from ppl.transforms import objectives as O

MNIST = "/work/shared/data/mnist"


def load_x(n):
    if os.path.isdir(MNIST):
        ds = data.load_mnist(MNIST)
        return np.asarray(data.binarize_static(ds.x_train[:n])), "MNIST (threshold-binarized)"
    rng = np.random.default_rng(0)
    return (rng.random((n, 784)) < 0.13).astype(np.float32), "random binary (MNIST not found)"


def ppl_loss():
    E = expectation(O.elbo(vae.model, vae.guide))

    def loss(params, key, x):
        return -E.estimate(key, (params["theta"], x), (params["phi"], x)) / x.shape[0]
    return loss


def hand_loss(params, key, x):
    loc, scale = vae.encode(params["phi"], x)
    eps = jax.random.normal(key, loc.shape)
    z = loc + scale * eps
    logits = vae.decode(params["theta"], z)
    log_px = jnp.sum(x * logits - jax.nn.softplus(logits))
    log_pz = jnp.sum(-0.5 * z**2 - 0.5 * jnp.log(2 * jnp.pi))
    log_qz = jnp.sum(-0.5 * eps**2 - jnp.log(scale) - 0.5 * jnp.log(2 * jnp.pi))
    return -(log_px + log_pz - log_qz) / x.shape[0]


def numpyro_loss():
    from numpyro.infer import Trace_ELBO

    def model(params, x):
        with numpyro.plate("batch", x.shape[0]):
            z = numpyro.sample("z", nd.Normal(jnp.zeros((x.shape[0], 10)), 1.0).to_event(1))
            numpyro.sample("x", nd.Bernoulli(logits=vae.decode(params["theta"], z)).to_event(1), obs=x)

    def guide(params, x):
        loc, scale = vae.encode(params["phi"], x)
        with numpyro.plate("batch", x.shape[0]):
            numpyro.sample("z", nd.Normal(loc, scale).to_event(1))

    elbo = Trace_ELBO()

    def loss(params, key, x):
        return elbo.loss(key, {}, model, guide, params, x) / x.shape[0]
    return loss


def compile_fn(loss, params, key, x):
    f = jax.jit(jax.value_and_grad(loss))
    t = time.perf_counter()
    compiled = f.lower(params, key, x).compile()
    compile_s = time.perf_counter() - t
    value = float(jax.block_until_ready(compiled(params, key, x))[0])
    return compiled, compile_s, value


def race(fns, params, key, x, rounds, reps):
    """Median per-call time of each function over ``rounds`` alternating rounds of ``reps``
    back-to-back calls (fresh keys), so that machine drift hits every system alike."""
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name, f in fns.items():
            t = time.perf_counter()
            for i in range(reps):
                out = f(params, jax.random.fold_in(key, r * reps + i), x)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t) / reps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="alternating timing rounds")
    p.add_argument("--reps", type=int, default=10, help="calls per system per round")
    p.add_argument("--batches", default="64,128,256,512,1024")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    x_all, source = load_x(max(batches))
    params = vae.init_params(jax.random.key(0), vae.PLDI_TABLE1)
    key = jax.random.key(1)
    systems = {"ppl": ppl_loss(), "hand": hand_loss, "numpyro": numpyro_loss()}
    print(f"data: {source}; devices: {jax.devices()}; {args.rounds} alternating rounds of "
          f"{args.reps} calls per system")
    print(f"{'batch':>5} | {'ppl ms':>8} {'hand ms':>8} {'numpyro ms':>10} | {'ppl/hand':>8} {'ppl/npyro':>9} | "
          f"{'compile ppl s':>13} {'hand s':>7} {'npyro s':>7} {'ppl/hand':>8}")
    for b in batches:
        x = jnp.asarray(x_all[:b])
        c = {name: compile_fn(fn, params, key, x) for name, fn in systems.items()}
        # same math, same key: the values agree up to float error
        assert abs(c["ppl"][2] - c["hand"][2]) < 1e-2 * abs(c["hand"][2]), (c["ppl"][2], c["hand"][2])
        t = race({name: v[0] for name, v in c.items()}, params, key, x, args.rounds, args.reps)
        print(f"{b:>5} | {t['ppl']*1e3:8.3f} {t['hand']*1e3:8.3f} {t['numpyro']*1e3:10.3f} | "
              f"{t['ppl']/t['hand']:8.3f} {t['ppl']/t['numpyro']:9.3f} | "
              f"{c['ppl'][1]:13.2f} {c['hand'][1]:7.2f} {c['numpyro'][1]:7.2f} "
              f"{c['ppl'][1]/c['hand'][1]:8.2f}", flush=True)

if __name__ == "__main__":
    main()
