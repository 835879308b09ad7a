"""M-FAC against SGD and Adam on a digits MLP (ppl.backends.optim.mfac, via fit).

An MLP 64 -> hidden -> hidden -> 10 (tanh) trained with cross-entropy on scikit-learn's digits
by ``ppl.transforms.fit.fit`` (minibatches of --batch-size), the same initialization and the
same minibatches for each optimizer. M-FAC uses a window of m gradients and the reference's
damping 1e-5 (the M-FAC paper compares against tuned SGD and Adam; here each optimizer gets a
small grid of learning rates and the best final training loss is reported). Printed: the final
training loss (mean of the last 50 steps), test accuracy and seconds per run.

    python examples/mfac_digits.py --out runs/mfac_digits
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl.backends import optim
from ppl.models import data
from ppl.transforms.fit import fit


def init_mlp(key, sizes):
    ks = jax.random.split(key, len(sizes) - 1)
    return [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
            for k, a, b in zip(ks, sizes[:-1], sizes[1:])]


def logits(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss(key, params, batch):
    x, y = batch
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--mfac-grads", type=int, default=32)
    ap.add_argument("--damping", type=float, default=1e-5)
    ap.add_argument("--grid", default="sgd:0.03,0.1,0.3;adam:0.001,0.003,0.01;mfac:0.001,0.003,0.01",
                    help="learning rates per optimizer")
    ap.add_argument("--out", default="runs/mfac_digits")
    a = ap.parse_args(argv)
    ds = data.load("digits")
    train = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
    params0 = init_mlp(jax.random.key(0), [64, a.hidden, a.hidden, 10])
    d = sum(x.size for x in jax.tree_util.tree_leaves(params0))
    make = {"sgd": lambda lr: optax.sgd(lr, momentum=0.9), "adam": optax.adam,
            "mfac": lambda lr: optim.mfac(lr, num_grads=a.mfac_grads, damping=a.damping)}
    print(f"digits MLP 64-{a.hidden}-{a.hidden}-10 ({d} parameters), batch {a.batch_size}, {a.steps} steps; "
          f"M-FAC m={a.mfac_grads}, damping {a.damping:g}; SGD with momentum 0.9")
    print(f"{'optimizer':<10} {'lr':>8} {'train loss':>10} {'test acc':>8} {'seconds':>8}")
    best = {}
    for spec in a.grid.split(";"):
        name, lrs = spec.split(":")
        for lr in map(float, lrs.split(",")):
            t0 = time.time()
            res = fit(loss, make[name](lr), params0, key=jax.random.key(1), num_steps=a.steps, data=train,
                      batch_size=a.batch_size, chunk=min(100, a.steps), progress=False)
            secs = time.time() - t0
            final = float(np.mean(res.history[-50:]))
            acc = float(jnp.mean(jnp.argmax(logits(res.params, ds.x_test), -1) == ds.y_test))
            print(f"{name:<10} {lr:>8.2g} {final:>10.4f} {acc:>8.3f} {secs:>8.1f}")
            if not np.isfinite(final):
                continue
            if name not in best or final < best[name][1]:
                best[name] = (lr, final, acc, res.history)
    print("best per optimizer (by final training loss):")
    for name, (lr, final, acc, _) in best.items():
        print(f"  {name:<8} lr {lr:<8.2g} train loss {final:.4f}  test acc {acc:.3f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(a.out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (lr, _, _, hist) in best.items():
        smooth = np.convolve(hist, np.ones(20) / 20, mode="valid")
        ax.plot(smooth, label=f"{name} (lr {lr:g})")
    ax.set(xlabel="step", ylabel="training loss (20-step mean)", yscale="log")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(a.out, "mfac_digits.png")
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
