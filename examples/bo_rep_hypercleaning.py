"""Data hyper-cleaning on digits with BO-REP (Hao, Gong & Liu, ICLR 2024) against a
plain-gradient bilevel baseline and against training on the noisy labels directly.

A fraction ``--flip`` of the training labels is replaced by a different random class. Upper
variable: one logit ``lam_i`` per training example, weight ``sigmoid(lam_i)``. Lower level:
softmax regression ``W`` (64 pixels + bias -> 10 classes) minimizing
``mean_i sigmoid(lam_i) CE(x_i W, noisy y_i) + (c / 2) ||W||^2`` (strongly convex in W). Upper
level: the cross-entropy of ``W`` on a small clean validation set. Both levels draw minibatches
(``--batch``) from the step's key.

Compared at equal budget (the same number of outer steps and of lower-level SGD steps, and the
same z-iterate for the linear system):
  * BO-REP: initialization refinement, a lower update every ``--period`` steps, normalized
    momentum on ``lam``; its step ``eta`` is the best of ``--upper-lrs`` by validation loss;
  * plain: a lower update at every step (the same total number of lower steps, spread evenly,
    no refinement) and plain SGD on ``lam``; its learning rate is the best of ``--plain-lrs``
    by validation loss (the example reports all of them);
  * noisy: the lower problem with all weights equal (``lam = 0``), solved to convergence.

Printed: test accuracy of each, and how well BO-REP's weights separate flipped from clean
examples (mean weight of each group, and the area under the ROC curve of ``-lam`` for "flipped").

    python examples/bo_rep_hypercleaning.py
"""
from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl.backends.bilevel import bo_rep
from ppl.models.data import load_digits


def make_problem(args):
    data = load_digits(n_valid=args.n_valid, n_test=args.n_test, seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    x_tr, y_clean = data.x_train[:args.n_train], data.y_train[:args.n_train]
    flipped = rng.random(len(y_clean)) < args.flip
    y_noisy = np.where(flipped, (y_clean + rng.integers(1, 10, len(y_clean))) % 10, y_clean)
    bias = lambda x: jnp.asarray(np.concatenate([x, np.ones((len(x), 1), np.float32)], 1))
    return dict(x_tr=bias(x_tr), y_tr=jnp.asarray(y_noisy), flipped=flipped,
                x_va=bias(data.x_valid), y_va=jnp.asarray(data.y_valid),
                x_te=bias(data.x_test), y_te=jnp.asarray(data.y_test))


def cross_entropy(W, x, y):
    return -jnp.take_along_axis(jax.nn.log_softmax(x @ W), y[:, None], 1)[:, 0]


def objectives(p, batch, reg):
    n_tr, n_va = len(p["y_tr"]), len(p["y_va"])

    def pick(key, n):  # a minibatch of indices (all of them when batch >= n)
        return jnp.arange(n) if batch >= n else jax.random.choice(key, n, (batch,), replace=False)

    def g(lam, W, key):
        i = pick(key, n_tr)
        ce = cross_entropy(W, p["x_tr"][i], p["y_tr"][i])
        return jnp.mean(jax.nn.sigmoid(lam[i]) * ce) + 0.5 * reg * jnp.sum(W ** 2)

    def f(lam, W, key):
        i = pick(key, n_va)
        return jnp.mean(cross_entropy(W, p["x_va"][i], p["y_va"][i]))

    return f, g


def accuracy(W, x, y):
    return float(jnp.mean(jnp.argmax(x @ W, 1) == y))


def auc(scores, positives):
    """Probability that a random positive scores above a random negative (ties count half)."""
    s_pos, s_neg = scores[positives], scores[~positives]
    return float(np.mean((s_pos[:, None] > s_neg[None]) + 0.5 * (s_pos[:, None] == s_neg[None])))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-valid", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--flip", type=float, default=0.4, help="fraction of training labels flipped")
    ap.add_argument("--reg", type=float, default=1e-3, help="ridge c of the lower level")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=600, help="outer steps")
    ap.add_argument("--period", type=int, default=5, help="BO-REP's I")
    ap.add_argument("--lower-steps", type=int, default=10, help="BO-REP's N")
    ap.add_argument("--refine", type=int, default=600, help="BO-REP's T0")
    ap.add_argument("--lower-lr", type=float, default=1.0)
    ap.add_argument("--z-lr", type=float, default=1.0)
    ap.add_argument("--upper-lrs", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                    help="normalized momentum's eta: the best by validation loss is reported")
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--plain-lrs", type=float, nargs="+", default=[1e3, 1e4, 1e5])
    ap.add_argument("--noisy-steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    p = make_problem(args)
    f, g = objectives(p, args.batch, args.reg)
    n_tr = len(p["y_tr"])
    lam0, W0 = jnp.zeros(n_tr), jnp.zeros((p["x_tr"].shape[1], 10))
    key = jax.random.key(args.seed)
    budget = args.refine + math.ceil(args.steps / args.period) * args.lower_steps
    print(f"digits: {n_tr} train ({int(p['flipped'].sum())} labels flipped, "
          f"{args.flip:.0%}), {len(p['y_va'])} clean validation, {len(p['y_te'])} test; "
          f"{args.steps} outer steps, {budget} lower-level SGD steps each")

    # Training on the noisy labels directly: lam = 0 for every example, many SGD steps.
    noisy = bo_rep(f, g, upper_optimizer=optax.set_to_zero(), lower_lr=args.lower_lr,
                   refine_steps=args.noisy_steps, z_lr=args.z_lr)
    W_noisy = noisy.init(key, lam0, W0).y

    def report(name, state):
        lam, W = state.x, state.y
        val = float(jnp.mean(cross_entropy(W, p["x_va"], p["y_va"])))  # the whole validation set
        print(f"{name:<28s} test acc {accuracy(W, p['x_te'], p['y_te']):.4f}   "
              f"val loss {val:.4f}   train acc (noisy labels) "
              f"{accuracy(W, p['x_tr'], p['y_tr']):.4f}")
        return val

    print(f"{'noisy (lam = 0)':<28s} test acc {accuracy(W_noisy, p['x_te'], p['y_te']):.4f}")

    rows = []
    for lr in args.upper_lrs:
        borep = bo_rep(f, g, upper_lr=lr, momentum=args.momentum, lower_lr=args.lower_lr,
                       period=args.period, lower_steps=args.lower_steps, refine_steps=args.refine,
                       z_lr=args.z_lr)
        st, _ = borep.run(key, lam0, W0, args.steps)
        rows.append((report(f"BO-REP eta={lr:g}", st), lr, st))
    _, lr, state = min(rows, key=lambda r: r[0])
    w = np.asarray(jax.nn.sigmoid(state.x))
    print(f"BO-REP (best eta={lr:g} by val loss) test acc "
          f"{accuracy(state.y, p['x_te'], p['y_te']):.4f}")
    print(f"BO-REP weights: mean {w[p['flipped']].mean():.3f} on flipped, "
          f"{w[~p['flipped']].mean():.3f} on clean; AUC(flipped) "
          f"{auc(-np.asarray(state.x), p['flipped']):.3f}")

    per_step = math.ceil(budget / args.steps)  # the plain baseline's lower steps per outer step
    rows = []
    for lr in args.plain_lrs:
        plain = bo_rep(f, g, upper_optimizer=optax.sgd(lr), lower_lr=args.lower_lr, period=1,
                       lower_steps=per_step, refine_steps=0, z_lr=args.z_lr)
        st, _ = plain.run(key, lam0, W0, args.steps)
        rows.append((report(f"plain SGD lr={lr:g}", st), lr, st))
    best = min(rows, key=lambda r: r[0])
    W = best[2].y
    print(f"plain-gradient baseline (best lr={best[1]:g} by val loss, {per_step * args.steps} "
          f"lower steps) test acc {accuracy(W, p['x_te'], p['y_te']):.4f}")
    print(f"summary: test acc noisy {accuracy(W_noisy, p['x_te'], p['y_te']):.4f}  "
          f"plain {accuracy(W, p['x_te'], p['y_te']):.4f}  "
          f"BO-REP {accuracy(state.y, p['x_te'], p['y_te']):.4f}")


if __name__ == "__main__":
    main()
