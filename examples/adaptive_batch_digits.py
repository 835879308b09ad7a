"""AdAdaGrad on digits: AdaGrad-Norm with an adaptive batch size (norm test or augmented
inner-product test) against constant batch sizes, with the same number of examples seen.

Softmax regression (64 pixels -> 10 classes, weight decay 1e-4) on scikit-learn's 8x8 digits
(1,257 train / 360 test), optimizer ``adagrad_norm(lr)``. The adaptive runs start at
``--initial`` examples per step and let ``AdaptiveBatch`` grow the batch (buckets of powers of
two up to ``--maximum``) for ``--steps`` steps; each constant-batch run then gets as many
steps as it needs to see the same number of examples as the norm-test run. Reported per
configuration (mean and sd over ``--seeds``): steps taken, examples seen, final full-batch
training loss, test accuracy, and the final batch size.

    python examples/adaptive_batch_digits.py --out runs/adaptive_batch
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from ppl.backends.adaptive import AdaptiveBatch, adagrad_norm
from ppl.models.data import load_digits
from ppl.transforms.fit import fit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="steps of the adaptive runs")
    p.add_argument("--initial", type=int, default=8)
    p.add_argument("--maximum", type=int, default=1024)
    p.add_argument("--eta", type=float, default=0.5, help="norm test threshold (the paper uses 0.1 and 0.5)")
    p.add_argument("--theta", type=float, default=0.3, help="inner-product test threshold")
    p.add_argument("--nu", type=float, default=1.0, help="orthogonality test threshold")
    p.add_argument("--lr", type=float, default=2.0)
    p.add_argument("--constant", type=int, nargs="+", default=[8, 64, 512, 1024])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="runs/adaptive_batch")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    ds = load_digits()
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    n = x.shape[0]
    maximum = min(args.maximum, n)

    def logits(params, xb):
        return xb @ params["w"] + params["b"]

    def loss(key, params, batch):
        xb, yb = batch
        nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(params, xb)), yb[:, None], 1))
        return nll + 1e-4 * jnp.sum(params["w"] ** 2)

    full_loss = jax.jit(lambda params: loss(None, params, (x, y)))
    accuracy = jax.jit(lambda params: jnp.mean(jnp.argmax(logits(params, xt), -1) == yt))
    p0 = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}

    configs = {"adaptive norm": AdaptiveBatch(test="norm", eta=args.eta, initial=args.initial, maximum=maximum),
               "adaptive augmented": AdaptiveBatch(test="augmented", theta=args.theta, nu=args.nu,
                                                   initial=args.initial, maximum=maximum)}
    rows = {}
    curves = {}
    for seed in range(args.seeds):
        key = jax.random.key(seed)
        budget = None
        for name, ctl in configs.items():
            res = fit(loss, adagrad_norm(args.lr), p0, key=key, num_steps=args.steps, data=(x, y),
                      batch_size=ctl, chunk=100, progress=False)
            seen = int(np.sum(res.batch_sizes))
            budget = budget or seen  # the norm-test run sets the example budget
            rows.setdefault(name, []).append((args.steps, seen, float(full_loss(res.params)),
                                              float(accuracy(res.params)), int(res.batch_sizes[-1])))
            if seed == 0:
                curves[name] = (np.cumsum(res.batch_sizes), res.history, res.batch_sizes)
        for b in args.constant:
            b = min(b, n)
            steps = max(1, budget // b)
            res = fit(loss, adagrad_norm(args.lr), p0, key=key, num_steps=steps, data=(x, y), batch_size=b,
                      chunk=100, progress=False)
            name = f"constant {b}"
            rows.setdefault(name, []).append((steps, steps * b, float(full_loss(res.params)),
                                              float(accuracy(res.params)), b))
            if seed == 0:
                curves[name] = (b * np.arange(1, steps + 1), res.history, np.full(steps, b))

    print(f"softmax regression on digits, AdaGrad-Norm lr {args.lr}, {args.seeds} seeds; adaptive: "
          f"{args.steps} steps from batch {args.initial} (max {maximum}); constant: the norm-test run's examples")
    print(f"{'configuration':<20} {'steps':>7} {'examples':>9} {'train loss':>16} {'test acc':>16} {'final batch':>11}")
    for name, r in rows.items():
        r = np.asarray(r, float)
        m, s = r.mean(0), r.std(0)
        print(f"{name:<20} {m[0]:7.0f} {m[1]:9.0f} {m[2]:9.4f} +- {s[2]:.4f} {m[3]:9.4f} +- {s[3]:.4f} {m[4]:11.0f}")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for name, (seen, hist, sizes) in curves.items():
        ax[0].plot(seen, hist, label=name, lw=1)
        ax[1].plot(sizes, label=name)
    ax[0].set(xlabel="examples seen", ylabel="minibatch loss", yscale="log")
    ax[1].set(xlabel="step", ylabel="batch size", yscale="log", xscale="log")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "adaptive_batch_digits.png"), dpi=120)
    print(f"plot: {os.path.join(args.out, 'adaptive_batch_digits.png')}")


if __name__ == "__main__":
    main()
