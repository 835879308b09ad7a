"""Convex training of a two-layer ReLU network by ADMM (Bai, Gautam & Sojoudi) against
gradient training of the same non-convex network, on scikit-learn's breast-cancer data.

Both minimize the same objective, ``1/2 sum_i (f(x_i) - y_i)^2 + beta/2 (||W||^2 + ||alpha||^2)``
with ``y = +-1`` (squared loss, as in the paper), ``f(x) = relu(x W) alpha``, 30 standardized
features plus a bias. ADMM solves the convex program over ``P`` sampled activation patterns and
recovers a network with up to ``2P`` neurons; the non-convex network gets ``--width`` neurons and
is trained by full-batch gradient descent with momentum and by minibatch SGD (learning rates
``--sgd-lrs``, best final objective reported), from ``--restarts`` random initializations. Printed: the
objective each reaches, the recovered network's objective (equal to the convex one), the ADMM
objective after a few iterations, and test accuracy (sign of f).

    python examples/convex_relu_breast_cancer.py
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl.backends import convex_relu as cr


def load(seed, n_test):
    from sklearn.datasets import load_breast_cancer
    raw = load_breast_cancer()
    x, y = raw.data.astype(np.float64), np.where(raw.target == 1, 1.0, -1.0)
    perm = np.random.default_rng(seed).permutation(len(x))
    te, tr = perm[:n_test], perm[n_test:]
    mu, sd = x[tr].mean(0), x[tr].std(0)
    x = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
    return x[tr], y[tr], x[te], y[te]


def accuracy(W, alpha, x, y):
    return float(np.mean(np.sign(np.asarray(cr.predict(W, alpha, x))) == y))


def train_nonconvex(key, x, y, beta, m, opt, steps, batch):
    x, y = jnp.asarray(x), jnp.asarray(y)
    k_init, k_data = jax.random.split(key)
    kW, ka = jax.random.split(k_init)
    params = (jax.random.normal(kW, (x.shape[1], m)) / np.sqrt(x.shape[1]),
              jax.random.normal(ka, (m,)) / np.sqrt(m))
    n = len(y)

    def loss(p, idx):  # the full objective, estimated on a minibatch
        W, a = p
        r = cr.predict(W, a, x[idx]) - y[idx]
        return 0.5 * n * jnp.mean(r ** 2) + 0.5 * beta * (jnp.sum(W ** 2) + jnp.sum(a ** 2))

    @jax.jit
    def run(params, key):
        def step(c, k):
            p, s = c
            idx = jnp.arange(n) if batch >= n else jax.random.choice(k, n, (batch,), replace=False)
            g = jax.grad(loss)(p, idx)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        return jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))[0][0]

    W, a = run(params, k_data)
    return W, a, float(cr.network_loss(W, a, x, y, beta))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gates", type=int, default=1000, help="sampled activation patterns P")
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--rho", type=float, default=1.0)
    ap.add_argument("--iters", type=int, default=1000, help="ADMM iterations")
    ap.add_argument("--width", type=int, default=100, help="neurons of the non-convex network")
    ap.add_argument("--steps", type=int, default=5000, help="gradient steps of the non-convex runs")
    ap.add_argument("--sgd-lrs", type=float, nargs="+", default=[1e-4, 3e-4])
    ap.add_argument("--batch", type=int, default=32, help="minibatch of the SGD runs")
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--n-test", type=int, default=169)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    x, y, xt, yt = load(args.seed, args.n_test)
    key = jax.random.key(args.seed)
    gates = cr.sample_gates(key, x, args.gates)
    P = gates.shape[0]
    print(f"breast cancer: {len(y)} train, {len(yt)} test, d = {x.shape[1]} (with bias); "
          f"P = {P} distinct sampled patterns, beta = {args.beta}")

    t0 = time.perf_counter()
    res = cr.admm(x, y, gates, beta=args.beta, rho=args.rho, num_iters=args.iters)
    res.v.block_until_ready()
    t_admm = time.perf_counter() - t0
    W, a = cr.recover_network(res.v)
    obj = np.asarray(res.objective)
    alive = int(np.sum(np.asarray(a) != 0))
    print(f"ADMM ({args.iters} iterations, {t_admm:.1f} s incl. compile): convex objective "
          f"{obj[-1]:.6f} (after 10: {obj[min(9, len(obj) - 1)]:.4f}, 100: "
          f"{obj[min(99, len(obj) - 1)]:.4f}), constraint violation "
          f"{float(res.violation[-1]):.1e}, {alive} of {2 * P} neurons nonzero")
    print(f"recovered network ({alive} neurons): objective {float(cr.network_loss(W, a, x, y, args.beta)):.6f}   "
          f"train acc {accuracy(W, a, x, y):.4f}   test acc {accuracy(W, a, xt, yt):.4f}")

    for name, batch, make in [("GD+momentum", len(y), lambda lr: optax.sgd(lr, momentum=0.9)),
                              (f"SGD (batch {args.batch})", args.batch, optax.sgd)]:
        rows = []
        for lr in args.sgd_lrs:
            for r in range(args.restarts):
                W2, a2, o = train_nonconvex(jax.random.fold_in(key, r + 1), x, y, args.beta,
                                            args.width, make(lr), args.steps, batch)
                rows.append((o if np.isfinite(o) else np.inf, lr, r, W2, a2))
        best = min(rows, key=lambda t: t[0])
        for lr in args.sgd_lrs:
            objs = [t[0] for t in rows if t[1] == lr]
            print(f"{name:<18s} lr {lr:g}, {args.width} neurons: objective over {args.restarts} restarts "
                  + " ".join(f"{o:.4f}" for o in objs))
        print(f"{name:<18s} best: objective {best[0]:.6f} (gap to ADMM {best[0] - obj[-1]:+.4f})   "
              f"train acc {accuracy(best[3], best[4], x, y):.4f}   "
              f"test acc {accuracy(best[3], best[4], xt, yt):.4f}")


if __name__ == "__main__":
    main()
