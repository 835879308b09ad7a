"""Sharded ``fit(..., mesh=...)`` on 1, 2, 4 and 8 devices: same results, step time.

usage: python bench/bench_sharded_fit.py [--steps 200] [--chunk 50] [--batch 512] [--devices 8]
       [--variant data|params|particles|cbo|all] [--particles 16] [--cbo-n 4096] [--cbo-d 32]

Without a GPU/TPU, the devices are simulated CPU devices
(``--xla_force_host_platform_device_count``, set here before JAX starts): they share the
machine's cores, so the ratios show sharding's overhead, not a speedup. Bayesian linear
regression (N examples x D features, a Gaussian guide over the weights, the ELBO with ADEV
gradients, Adam), one process; each device count fits from the same start with the same key.
Step time: wall time of the chunks after the first (the first compiles), per step, median of
chunks. Prints, per device count, ms/step, the ratio to the unsharded run and the largest
parameter difference from it.

Variants: ``data`` (minibatch split along a mesh of k devices, parameters replicated),
``params`` (the same, plus ``param_sharding="data"``: parameters and Adam's moments split along
that axis too, ZeRO/FSDP-style), ``particles`` (the IWAE with ``--particles`` particles over the
minibatch, ``particle_axis="particles"`` on a 1 x k mesh ``("data", "particles")``: the particles
split, the minibatch whole), ``cbo`` (not a fit: CBO's ``minimize`` on Rastrigin with
``--cbo-n`` particles in ``--cbo-d`` dimensions, ``CBO(..., particle_axis="particles")`` under
the mesh, against the same CBO without it; time of a second ``minimize`` call after a first that
compiles; difference of the final consensus).
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
ap.add_argument("--variant", choices=("data", "params", "particles", "cbo", "all"), default="all")
ap.add_argument("--cbo-n", type=int, default=4096)
ap.add_argument("--cbo-d", type=int, default=32)
ap.add_argument("--particles", type=int, default=16)
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
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (args.n, args.d))
    y = x @ jax.random.normal(kw, (args.d,)) + 0.5 * jax.random.normal(ky, (args.n,))
    data = {"x": x, "y": y}
    params = {"loc": jnp.zeros(args.d), "s": jnp.full(args.d, -1.0)}
    devs = jax.devices()
    print(f"backend {jax.default_backend()}, {len(devs)} devices ({devs[0].device_kind}); N={args.n} D={args.d} "
          f"batch={args.batch}, {args.steps} steps in chunks of {args.chunk}")
    variants = ("data", "params", "particles", "cbo") if args.variant == "all" else (args.variant,)
    for variant in variants:
        if variant == "cbo":
            cbo_variant(devs)
            continue
        particle_axis = "particles" if variant == "particles" else None
        objective = (O.iwae(model, guide, args.particles, particle_axis=particle_axis) if variant == "particles"
                     else O.elbo(model, guide))
        plain = O.iwae(model, guide, args.particles) if variant == "particles" else objective
        E, E_plain = expectation(objective), expectation(plain)

        def run(mesh, E):
            def loss(k, p, b):
                return -E.estimate(k, (b["x"], b["y"]), (p,)) / args.batch

            kw = {}
            if mesh is not None:
                kw = dict(mesh=mesh, data_axis="data", param_sharding="data" if variant == "params" else None)
            stamps = []
            r = fit(loss, optax.adam(1e-2), params, key=jax.random.key(1), num_steps=args.steps, data=data,
                    batch_size=args.batch, chunk=args.chunk, progress=False,
                    callbacks=[lambda step, state, losses: (jax.block_until_ready(state),
                                                            stamps.append(time.perf_counter()))], **kw)
            per_step = np.median(np.diff(stamps)) / args.chunk * 1e3 if len(stamps) > 2 else float("nan")
            return np.concatenate([np.ravel(r.params["loc"]), np.ravel(r.params["s"])]), per_step, r.history[-1]

        what = {"data": "minibatch split, parameters replicated",
                "params": "minibatch split, parameters and Adam state split (param_sharding='data')",
                "particles": f"IWAE K={args.particles}, particles split (particle_axis=), minibatch whole"}[variant]
        print(f"\nvariant {variant}: {what}")
        ref, t_ref, l_ref = run(None, E_plain)
        print(f"{'devices':>8} {'ms/step':>9} {'ratio to unsharded':>19} {'max |param diff|':>17} {'final loss':>11}")
        print(f"{'none':>8} {t_ref:9.3f} {1.0:19.2f} {0.0:17.2e} {l_ref:11.5f}")
        for k in (1, 2, 4, 8):
            if k > len(devs):
                break
            shape, names = ((1, k), ("data", "particles")) if variant == "particles" else ((k,), ("data",))
            mesh = jax.make_mesh(shape, names, devices=devs[:k])
            p, t, last = run(mesh, E)
            print(f"{k:>8} {t:9.3f} {t / t_ref:19.2f} {np.max(np.abs(p - ref)):17.2e} {last:11.5f}")


def cbo_variant(devs):
    from ppl.transforms.cbo import CBO, CBOConfig, Termination

    n, d = args.cbo_n, args.cbo_d

    def rastrigin(z):
        return jnp.mean(z ** 2 - 10 * jnp.cos(2 * jnp.pi * z) + 10)

    cfg = CBOConfig(dt=0.05, sigma=0.8, alpha=30.0)
    x0 = 3.0 * jax.random.normal(jax.random.key(3), (n, d))
    term = Termination(max_steps=args.steps)

    def timed(cbo, mesh):
        def go():
            state, _ = cbo.minimize(jax.random.key(4), x0, term)
            return jax.block_until_ready(state)
        if mesh is None:
            go()
            t0 = time.perf_counter()
            state = go()
        else:
            with jax.set_mesh(mesh):
                go()
                t0 = time.perf_counter()
                state = go()
        return np.asarray(state.consensus), (time.perf_counter() - t0) / args.steps * 1e3, float(state.best_energy)

    print(f"\nvariant cbo: CBO on Rastrigin, N={n} particles, d={d}, {args.steps} steps, particles split "
          "(particle_axis=)")
    ref, t_ref, e_ref = timed(CBO(rastrigin, cfg), None)
    print(f"{'devices':>8} {'ms/step':>9} {'ratio to unsharded':>19} {'max |consensus diff|':>21} {'best energy':>12}")
    print(f"{'none':>8} {t_ref:9.3f} {1.0:19.2f} {0.0:21.2e} {e_ref:12.5f}")
    for k in (1, 2, 4, 8):
        if k > len(devs) or n % k:
            break
        mesh = jax.make_mesh((k,), ("particles",), devices=devs[:k],
                             axis_types=(jax.sharding.AxisType.Auto,))
        c, t, e = timed(CBO(rastrigin, cfg, particle_axis="particles"), mesh)
        print(f"{k:>8} {t:9.3f} {t / t_ref:19.2f} {np.max(np.abs(c - ref)):21.2e} {e:12.5f}")


if __name__ == "__main__":
    main()
