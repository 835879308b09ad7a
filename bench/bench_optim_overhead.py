"""Update cost of ppl's elementwise optimizers against ``optax.adam`` on the VAE's parameters.

The parameters are those of the PLDI Table 1 VAE (784-200-10 encoder/decoder, 318,394 numbers
in 8 arrays). One call = ``optimizer.update`` + ``optax.apply_updates`` on a fixed gradient,
jit-compiled with the parameters and state donated (as in a training step). Per-call time: the
median over alternating rounds (each round times ``--reps`` back-to-back calls of every
optimizer), so drift of the machine hits all alike.

    python bench/bench_optim_overhead.py                # recorded: --rounds 15 --reps 50
    python bench/bench_optim_overhead.py --quick
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
import optax

from ppl.backends import optim
from ppl.models import vae

OPTIMIZERS = {
    "optax.adam": lambda: optax.adam(1e-3),
    "diffgrad": lambda: optim.diffgrad(1e-3),
    "rm3 + sgd": lambda: optax.chain(optim.rm3(), optax.sgd(1e-3)),
    "optax.sgd (floor)": lambda: optax.sgd(1e-3),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.reps = 2, 3
    params = vae.init_params(jax.random.key(0), vae.PLDI_TABLE1)
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    grads = jax.tree_util.tree_map(lambda x: 0.01 * np.random.default_rng(0).normal(size=x.shape).astype(x.dtype),
                                   params)
    steps, states = {}, {}
    for name, make in OPTIMIZERS.items():
        opt = make()

        def step(p, s, g, opt=opt):
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        steps[name] = jax.jit(step, donate_argnums=(0, 1))
        p = jax.tree_util.tree_map(lambda x: x.copy(), params)
        s0 = jax.tree_util.tree_map(lambda x: x.copy(), opt.init(p))  # init shares zero buffers: copy to donate
        states[name] = steps[name](p, s0, grads)
        jax.block_until_ready(states[name])
    times = {k: [] for k in OPTIMIZERS}
    for _ in range(a.rounds):
        for name in OPTIMIZERS:
            p, s = states[name]
            t0 = time.perf_counter()
            for _ in range(a.reps):
                p, s = steps[name](p, s, grads)
            jax.block_until_ready((p, s))
            times[name].append((time.perf_counter() - t0) / a.reps)
            states[name] = (p, s)
    base = statistics.median(times["optax.adam"])
    print(f"VAE parameters: {n} numbers in {len(jax.tree_util.tree_leaves(params))} arrays; jax {jax.__version__}")
    print(f"{'optimizer':<20} {'us/update':>10} {'/ optax.adam':>13}")
    for name in OPTIMIZERS:
        t = statistics.median(times[name])
        print(f"{name:<20} {t * 1e6:>10.1f} {t / base:>13.2f}")


if __name__ == "__main__":
    main()
