"""Curvature diagnostics on a digits MLP: the minibatch Hessian's top eigenvalue against the
batch size, its SLQ spectral density, the linear-stability check during training, and NC1.

An MLP (64 -> hidden tanh -> 10, cross-entropy) is trained with SGD on scikit-learn's digits
through ``fit``. During training a ``CurvatureMonitor`` reports the full-batch Hessian's
``lambda_max`` and trace against the step size (GD needs ``lambda_max * lr / 2 <= 1``, SGD
``tr(H) * lr / 2 <= 1``, Wu & Su 2023), and a second callback records NC1 of the hidden
features. At the trained parameters, ``lambda_max`` of the Hessian of the loss on random
minibatches of size B (power iteration, ``--repeats`` minibatches per B) is compared with the
full-batch value: Granziol et al. predict the minibatch extremes exceed the full-batch ones and
fall toward them as B grows. SLQ densities of one small minibatch and of the full batch are
plotted.

    python examples/hessian_batch_size.py --out runs/hessian_batch
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl.backends.diagnostics import CurvatureMonitor, hessian_spectrum, hessian_top_eigenvalue, nc1
from ppl.models.data import load_digits
from ppl.transforms.fit import fit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--chunk", type=int, default=250)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=32, help="training batch size")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=100, help="power iterations")
    p.add_argument("--lanczos", type=int, default=40)
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--slq-batch", type=int, default=32, help="minibatch size of the SLQ density plotted")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/hessian_batch")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    ds = load_digits()
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    n = x.shape[0]
    key = jax.random.key(args.seed)
    k_init, k_fit, k_mon, k_eig = jax.random.split(key, 4)
    ka, kb = jax.random.split(k_init)
    h = args.hidden
    params = {"w1": jax.random.normal(ka, (64, h)) / 8.0, "b1": jnp.zeros(h),
              "w2": jax.random.normal(kb, (h, 10)) / jnp.sqrt(h), "b2": jnp.zeros(10)}

    def features(params, xb):
        return jnp.tanh(xb @ params["w1"] + params["b1"])

    def batch_loss(params, xb, yb):
        logits = features(params, xb) @ params["w2"] + params["b2"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], 1))

    full = lambda params: batch_loss(params, x, y)  # noqa: E731
    nc1_of = jax.jit(lambda params: nc1(features(params, x), y, 10))
    nc1_trace = [(0, float(nc1_of(params)))]

    print(f"MLP 64-{h}-10 on digits ({n} train), SGD lr {args.lr}, batch {args.batch}, {args.steps} steps")
    monitor = CurvatureMonitor(full, learning_rate=args.lr, key=k_mon, num_iters=args.iters, num_samples=50,
                               log=lambda line: print("  " + line))
    res = fit(lambda k, prm, b: batch_loss(prm, *b), optax.sgd(args.lr), params, key=k_fit, num_steps=args.steps,
              data=(x, y), batch_size=args.batch, chunk=args.chunk, progress=False,
              callbacks=[monitor, lambda step, state, losses: nc1_trace.append((step, float(nc1_of(state.params))))])
    print("NC1 of the hidden features during training: "
          + ", ".join(f"step {s}: {v:.3g}" for s, v in nc1_trace))
    # the same network trained by full-batch GD at the same step size, for contrast: GD's
    # stability only bounds lambda_max, SGD's also bounds the trace (Wu & Su 2023)
    gd_monitor = CurvatureMonitor(full, learning_rate=args.lr, key=k_mon, num_iters=args.iters, num_samples=50,
                                  every=args.steps // args.chunk or 1)
    fit(lambda k, prm, b: full(prm), optax.sgd(args.lr), params, key=k_fit, num_steps=args.steps,
        chunk=args.chunk, progress=False, callbacks=[gd_monitor])
    for name, mon in (("SGD", monitor), ("GD", gd_monitor)):
        r = mon.records[-1]
        print(f"after {r['step']} steps of {name:>3}: lambda_max {r['lambda_max']:.4g}, trace {r['trace']:.4g}; "
              f"2 / lr = {2 / args.lr:.4g}: lambda_max {'<=' if r['gd_stable'] else '>'} 2/lr, "
              f"trace {'<=' if r['sgd_stable'] else '>'} 2/lr")
    params = res.params

    top = jax.jit(lambda xb, yb, k: hessian_top_eigenvalue(lambda q: batch_loss(q, xb, yb), params, key=k,
                                                           num_iters=args.iters).value)
    lam_full = float(top(x, y, k_eig))
    print(f"\nlambda_max of the minibatch Hessian at the trained parameters ({args.repeats} minibatches per B)")
    print(f"{'B':>6} {'mean':>10} {'sd':>8} {'mean / full':>12}")
    table = []
    for B in args.sizes:
        vals = []
        for r in range(args.repeats):
            kr = jax.random.fold_in(jax.random.fold_in(k_eig, B), r)
            idx = jax.random.choice(kr, n, (B,), replace=False)
            vals.append(float(top(x[idx], y[idx], jax.random.fold_in(kr, 1))))
        table.append((B, np.mean(vals), np.std(vals)))
        print(f"{B:6d} {np.mean(vals):10.4f} {np.std(vals):8.4f} {np.mean(vals) / lam_full:12.2f}")
    print(f"{n:6d} {lam_full:10.4f} {'':>8} {1.0:12.2f}   (full batch)")

    small = args.slq_batch
    idx = jax.random.choice(jax.random.fold_in(k_eig, 7), n, (small,), replace=False)
    sd_small = hessian_spectrum(lambda q: batch_loss(q, x[idx], y[idx]), params, key=k_eig,
                                num_lanczos=args.lanczos, num_probes=args.probes)
    sd_full = hessian_spectrum(full, params, key=k_eig, num_lanczos=args.lanczos, num_probes=args.probes)
    for name, sd in ((f"B={small}", sd_small), ("full", sd_full)):
        print(f"SLQ {name:>6}: Ritz extremes [{float(sd.lambda_min()):.4g}, {float(sd.lambda_max()):.4g}], "
              f"trace {float(sd.trace()):.4g}")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    t = np.asarray(table)
    ax[0].errorbar(t[:, 0], t[:, 1], yerr=t[:, 2], marker="o", label="minibatch")
    ax[0].axhline(lam_full, color="k", ls="--", label="full batch")
    ax[0].set(xscale="log", xlabel="batch size B", ylabel="lambda_max", title="top Hessian eigenvalue")
    ax[0].legend()
    lo = min(float(sd_small.lambda_min()), float(sd_full.lambda_min()))
    hi = max(float(sd_small.lambda_max()), float(sd_full.lambda_max()))
    grid = np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 800)
    for name, sd in ((f"B={small}", sd_small), ("full", sd_full)):
        ax[1].plot(grid, np.asarray(sd.density(grid, 0.01 * (hi - lo))), label=name)
    ax[1].set(yscale="log", ylim=(1e-4, None), xlabel="eigenvalue", ylabel="density", title="SLQ spectral density")
    ax[1].legend()
    recs = monitor.records
    ax[2].plot([r["step"] for r in recs], [r["gd_ratio"] for r in recs], "o-", label="lr lambda_max / 2 (GD)")
    ax[2].plot([r["step"] for r in recs], [r["sgd_ratio"] for r in recs], "s-", label="lr tr(H) / 2 (SGD)")
    ax[2].axhline(1.0, color="k", ls="--")
    ax[2].set(xlabel="step", yscale="log", title="linear stability")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "hessian_batch_size.png"), dpi=120)
    print(f"plot: {os.path.join(args.out, 'hessian_batch_size.png')}")


if __name__ == "__main__":
    main()
