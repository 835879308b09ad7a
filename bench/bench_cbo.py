"""CBO side by side: ppl.transforms.cbo (JAX) against CBXpy (`cbx`, NumPy).

Same objective code (shifted Rastrigin and Ackley, minimizer x* = (1, ..., 1)), same particle
counts, iterations, initial particles and hyperparameters (anisotropic noise, dt, lambda, sigma,
alpha schedule alpha <- min(1.01 alpha, 1e5) after every step). Success: the final consensus
point within 0.25 of x* in the max norm (the criterion of Pinnau et al. / Fornasier et al.).

Ours is also run with Rademacher increments (`increments=cbo.RADEMACHER`, the weak Euler
scheme: same mean and covariance of the noise, 1 random bit per coordinate), which removes the
cost of Gaussian sampling that dominates a cheap objective on CPU.

Timing: ours after compilation with block_until_ready, (a) all seeds in one vmapped call (time
divided by the number of seeds) and (b) one run. CBXpy: (a) all seeds as M parallel runs in one
dynamic (its own batching), (b) single runs (M=1), averaged over --single-runs seeds.

    python bench/bench_cbo.py                 # the recorded configuration (~1.5 min, 2 cores)
    python bench/bench_cbo.py --quick         # smoke run
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ppl.transforms import cbo as C

SHIFT = 1.0


def rastrigin(x, xp=jnp):
    z = x - SHIFT
    return xp.mean(z ** 2 - 10 * xp.cos(2 * np.pi * z) + 10, axis=-1)


def ackley(x, xp=jnp):
    z = x - SHIFT
    return (-20 * xp.exp(-0.2 * xp.sqrt(xp.mean(z ** 2, axis=-1)))
            - xp.exp(xp.mean(xp.cos(2 * np.pi * z), axis=-1)) + 20 + np.e)


PROBLEMS = {"rastrigin": rastrigin, "ackley": ackley}


def success(consensus):
    return np.max(np.abs(np.asarray(consensus) - SHIFT), axis=-1) < 0.25


def run_ours(f, x0, args, increments=C.GAUSSIAN):
    cbo = C.CBO(f, C.CBOConfig(dt=args.dt, lam=args.lam, sigma=args.sigma, alpha=args.alpha,
                               alpha_factor=args.alpha_factor, alpha_max=args.alpha_max),
                noise=C.ANISOTROPIC, increments=increments)
    term = C.Termination(max_steps=args.steps)
    seeds = x0.shape[0]
    keys = jax.random.split(jax.random.key(args.seed), seeds)
    many = jax.jit(jax.vmap(lambda c, k, x: c.minimize(k, x, term), in_axes=(None, 0, 0)))
    one = jax.jit(lambda c, k, x: c.minimize(k, x, term))
    x0 = jnp.asarray(x0, jnp.float32)
    t = time.perf_counter()
    jax.block_until_ready(many(cbo, keys, x0))
    jax.block_until_ready(one(cbo, keys[0], x0[0]))
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    state, reason = jax.block_until_ready(many(cbo, keys, x0))
    batched = (time.perf_counter() - t) / seeds
    t = time.perf_counter()
    for i in range(args.single_runs):
        jax.block_until_ready(one(cbo, keys[i], x0[i]))
    single = (time.perf_counter() - t) / args.single_runs
    return success(state.consensus), batched, single, compile_s


def run_cbx(f, x0, args):
    from cbx.dynamics import CBO
    from cbx.scheduler import multiply, scheduler

    def make(x, seed):
        return CBO(lambda y: f(y, np), f_dim="3D", x=x, noise="anisotropic", dt=args.dt,
                   lamda=args.lam, sigma=args.sigma, alpha=args.alpha, max_it=args.steps,
                   verbosity=0, seed=seed, check_f_dims=False)

    def sched():
        return scheduler([multiply(name="alpha", factor=args.alpha_factor,
                                   maximum=args.alpha_max)])

    dyn = make(np.array(x0, np.float64), args.seed)
    t = time.perf_counter()
    dyn.optimize(sched=sched())
    batched = (time.perf_counter() - t) / x0.shape[0]
    ok = success(dyn.consensus.reshape(x0.shape[0], -1))
    t = time.perf_counter()
    for i in range(args.single_runs):
        make(np.array(x0[i:i + 1], np.float64), args.seed + i).optimize(sched=sched())
    single = (time.perf_counter() - t) / args.single_runs
    return ok, batched, single


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 10, 30])
    p.add_argument("--particles", type=int, nargs="+", default=[50, 100, 200],
                   help="particle count per entry of --dims")
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--single-runs", type=int, default=4,
                   help="single runs timed per system (one CBXpy run varies by up to 2x)")
    p.add_argument("--dt", type=float, default=0.01)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--sigma", type=float, default=5.0)
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--alpha-factor", type=float, default=1.01)
    p.add_argument("--alpha-max", type=float, default=1e5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.particles, args.seeds, args.steps, args.single_runs = [2], [20], 2, 20, 1
    if len(args.particles) != len(args.dims):
        p.error("--particles needs one entry per --dims entry")

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; steps={args.steps}, "
          f"seeds={args.seeds}, dt={args.dt}, lam={args.lam}, sigma={args.sigma}, "
          f"alpha={args.alpha} x{args.alpha_factor} <= {args.alpha_max}, anisotropic noise")
    header = (f"{'problem':10s} {'d':>3s} {'N':>4s} | {'succ ours':>9s} {'succ cbx':>8s} | "
              f"{'ours/run vmap':>13s} {'ours single':>11s} {'cbx/run M':>10s} {'cbx single':>10s}"
              f" | {'ratio vmap':>10s} {'ratio single':>12s} | compile | "
              f"{'succ rad':>8s} {'rad/run vmap':>12s} {'ratio rad':>9s}")
    print(header)
    print("-" * len(header))
    for name in args.problems:
        f = PROBLEMS[name]
        for d, n in zip(args.dims, args.particles):
            rng = np.random.default_rng(args.seed + 1000 * d)
            x0 = rng.uniform(-3.0, 3.0, (args.seeds, n, d)).astype(np.float32)
            ok, ours_b, ours_1, comp = run_ours(f, x0, args)
            ok_cbx, cbx_b, cbx_1 = run_cbx(f, x0, args)
            ok_r, rad_b, _, _ = run_ours(f, x0, args, C.RADEMACHER)
            print(f"{name:10s} {d:3d} {n:4d} | {ok.mean():9.2f} {ok_cbx.mean():8.2f} | "
                  f"{ours_b * 1e3:11.2f}ms {ours_1 * 1e3:9.2f}ms {cbx_b * 1e3:8.1f}ms "
                  f"{cbx_1 * 1e3:8.1f}ms | {cbx_1 / ours_b:9.0f}x {cbx_1 / ours_1:11.0f}x | "
                  f"{comp:5.1f}s | {ok_r.mean():8.2f} {rad_b * 1e3:10.2f}ms "
                  f"{cbx_1 / rad_b:8.0f}x", flush=True)
    print("ratio vmap = cbx single-run time / ours per run (vmapped over seeds); "
          "ratio single = cbx single run / ours single run; rad = ours with Rademacher "
          "increments (weak Euler), vmapped.")


if __name__ == "__main__":
    main()
