"""Sharded ``fit(..., mesh=...)`` on 1, 2, 4 and 8 devices: same results, step time.

usage: python bench/bench_sharded_fit.py [--steps 200] [--chunk 50] [--batch 512] [--devices 8]

Without a GPU/TPU, the devices are simulated CPU devices
(``--xla_force_host_platform_device_count``, set here before JAX starts): they share the
machine's cores, so the ratios show sharding's overhead, not a speedup. Bayesian linear
regression (N examples x D features, a Gaussian guide over the weights, the ELBO with ADEV
gradients, Adam), one process; each device count fits from the same start with the same key.
Step time: wall time of the chunks after the first (the first compiles), per step, median of
chunks. Prints, per device count, ms/step, the ratio to the unsharded run and the largest
parameter difference from it.
"""
import argparse
import os
import time

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--chunk", type=int, default=50)
ap.add_argument("--batch", type=int, default=512)
ap.add_argument("--n", type=int, default=8192)
ap.add_argument("--d", type=int, default=64)
ap.add_argument("--devices", type=int, default=8)
args = ap.parse_args()
if "cpu" in os.environ.get("JAX_PLATFORMS", "cpu"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as nd  # noqa: E402
import optax  # noqa: E402

import ppl  # noqa: E402
from ppl.transforms import expectation  # noqa: E402
from ppl.transforms.fit import fit  # noqa: E402
from ppl.transforms import objectives as O  # noqa: E402


def model(x, y):
    w = ppl.sample("w", nd.Normal(jnp.zeros(args.d), 1.0).to_event(1))
    ppl.sample("y", nd.Normal(x @ w, 0.5).to_event(1), obs=y)


def guide(phi):
    ppl.sample("w", nd.Normal(phi["loc"], jax.nn.softplus(phi["s"])).to_event(1))


def main():
    E = expectation(O.elbo(model, guide))
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (args.n, args.d))
    y = x @ jax.random.normal(kw, (args.d,)) + 0.5 * jax.random.normal(ky, (args.n,))
    data = {"x": x, "y": y}
    params = {"loc": jnp.zeros(args.d), "s": jnp.full(args.d, -1.0)}

    def loss(k, p, b):
        return -E.estimate(k, (b["x"], b["y"]), (p,)) / args.batch

    def run(mesh):
        stamps = []
        r = fit(loss, optax.adam(1e-2), params, key=jax.random.key(1), num_steps=args.steps, data=data,
                batch_size=args.batch, chunk=args.chunk, progress=False, mesh=mesh,
                callbacks=[lambda step, state, losses: (jax.block_until_ready(state), stamps.append(time.perf_counter()))])
        per_step = np.median(np.diff(stamps)) / args.chunk * 1e3 if len(stamps) > 2 else float("nan")
        return np.concatenate([np.ravel(r.params["loc"]), np.ravel(r.params["s"])]), per_step, r.history[-1]

    devs = jax.devices()
    print(f"backend {jax.default_backend()}, {len(devs)} devices ({devs[0].device_kind}); N={args.n} D={args.d} "
          f"batch={args.batch}, {args.steps} steps in chunks of {args.chunk}")
    ref, t_ref, l_ref = run(None)
    print(f"{'devices':>8} {'ms/step':>9} {'ratio to unsharded':>19} {'max |param diff|':>17} {'final loss':>11}")
    print(f"{'none':>8} {t_ref:9.3f} {1.0:19.2f} {0.0:17.2e} {l_ref:11.5f}")
    for k in (1, 2, 4, 8):
        if k > len(devs):
            break
        mesh = jax.make_mesh((k,), ("data",), devices=devs[:k])
        p, t, last = run(mesh)
        print(f"{k:>8} {t:9.3f} {t / t_ref:19.2f} {np.max(np.abs(p - ref)):17.2e} {last:11.5f}")


if __name__ == "__main__":
    main()
