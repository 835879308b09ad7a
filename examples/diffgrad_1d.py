"""diffGrad vs Adam on the diffGrad paper's 1-D non-convex functions (the authors' notebook).

Gradients of the three functions (the functions themselves are defined by them):
  F1: 2x + 0.6 for x <= 0, else 2x - 0.4          (local minimum 0.2, global -0.3)
  F2: -40 for x <= -0.9, else x cos 8x + sin 8x + 3x^2
  F3: piecewise: 2x, 1, -7/8, 7/8, -1, 2x on (-inf,-.5], (-.5,-.4], (-.4,0], (0,.4], (.4,.5], (.5,inf)
From x0 = -1: 300 iterates (299 updates), lr 0.1, beta1 0.95, beta2 0.999, eps 1e-8. The
notebook's Adam divides by sqrt(v_hat + eps) (optax's eps_root); diffGrad is
ppl.backends.optim.diffgrad. Prints the final x of each beside the notebook's values.

    python examples/diffgrad_1d.py --out runs/diffgrad_1d
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl.backends.optim import diffgrad

jax.config.update("jax_enable_x64", True)

GRADS = {
    "F1": lambda x: jnp.where(x <= 0, 2 * x + 0.6, 2 * x - 0.4),
    "F2": lambda x: jnp.where(x <= -0.9, -40.0, x * jnp.cos(8 * x) + jnp.sin(8 * x) + 3 * x * x),
    "F3": lambda x: jnp.select([x <= -0.5, x <= -0.4, x <= 0.0, x <= 0.4, x <= 0.5],
                               [2 * x, 1.0, -7 / 8, 7 / 8, -1.0], 2 * x),
}
#: The reference values quoted for this reproduction (F1, F2); F3 has none.
REFERENCE = {"F1": (0.200, -0.300), "F2": (0.000, -0.812)}


def trajectory(opt, grad, iters, x0=-1.0):
    def body(carry, _):
        x, s = carry
        u, s = opt.update(grad(x), s, x)
        x = optax.apply_updates(x, u)
        return (x, s), x
    x = jnp.asarray(x0)
    _, xs = jax.lax.scan(body, (x, opt.init(x)), None, length=iters - 1)
    return np.concatenate([[x0], np.asarray(xs)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--out", default="runs/diffgrad_1d")
    a = ap.parse_args(argv)
    opts = {"Adam": optax.adam(a.lr, b1=0.95, b2=0.999, eps=0.0, eps_root=1e-8),
            "diffGrad": diffgrad(a.lr, b1=0.95, b2=0.999, eps=1e-8)}
    runs = {f: {k: trajectory(o, g, a.iters) for k, o in opts.items()} for f, g in GRADS.items()}
    print(f"{'function':<9} {'Adam final x':>13} {'diffGrad final x':>17} {'notebook Adam':>14} {'notebook diffGrad':>18}")
    for f, r in runs.items():
        ref = REFERENCE.get(f, (float("nan"), float("nan")))
        print(f"{f:<9} {r['Adam'][-1]:>13.3f} {r['diffGrad'][-1]:>17.3f} {ref[0]:>14.3f} {ref[1]:>18.3f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(a.out, exist_ok=True)
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3))
    for ax, (f, r) in zip(axes, runs.items()):
        for k, xs in r.items():
            ax.plot(np.arange(1, len(xs) + 1), xs, label=k)
        ax.set_title(f)
        ax.set_xlabel("iteration")
        ax.grid(True)
    axes[0].set_ylabel("x")
    axes[0].legend()
    fig.tight_layout()
    path = os.path.join(a.out, "diffgrad_1d.png")
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
