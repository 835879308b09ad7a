"""Holomorphic equilibrium propagation on scikit-learn digits: alignment with the true gradient.

A two-hidden-layer recurrent network (``ppl.backends.equilibrium.FixedPointNet``): state
``a = [h1, h2]``, ``h1 = tanh(x W1 + h2 B + b1)``, ``h2 = tanh(h1 W2 + b2)``, readout
``o = h2 R + c`` with softmax cross-entropy. The feedback ``B`` is either tied (``B = W2^T``:
symmetric Jacobian ``J = dpre/da``, an energy-based network) or an independent weight
(asymmetric). Three networks are trained with the EP gradient (``--train-n`` nudges of radius
``--train-beta``) and Adam: symmetric, asymmetric, and asymmetric plus the Jacobian-homeostasis
loss (coefficient ``--homeo``). For each, on a held-out batch at the start and the end of
training, the cosine between the EP estimate and the implicit (recurrent-backprop) gradient is
reported for N in ``--ns`` and beta in ``--betas``, with the Jacobian asymmetry
``||J - J^T||^2 / (2 dim)`` and the test accuracy. The paper's claim (Laborieux & Zenke 2024,
Tab. 1, Fig. 3-4): holomorphic EP matches the true gradient for symmetric networks, with a
better estimate as N grows; asymmetric weights lower the alignment; homeostasis restores it.

    python examples/eqprop_digits.py --steps 300 --iters 200 --out runs/eqprop_digits
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ppl.backends.equilibrium import FixedPointNet


def load(seed):
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.3, random_state=seed, stratify=d.target)
    return jnp.asarray(xtr), jnp.asarray(ytr), jnp.asarray(xte), jnp.asarray(yte)


def make_net(hidden, tied, iters, dt):
    def pre(a, p, x):
        h1, h2 = a[..., :hidden], a[..., hidden:]
        fb = p["W2"].T if tied else p["B"]
        return jnp.concatenate([x @ p["W1"] + h2 @ fb + p["b1"], h1 @ p["W2"] + p["b2"]], -1)

    def loss(a, p, y):  # per-example softmax cross-entropy, holomorphic in a (no max shift)
        o = a[..., hidden:] @ p["R"] + p["c"]
        return jnp.log(jnp.sum(jnp.exp(o), -1)) - jnp.sum(y * o, -1)
    return FixedPointNet(pre, loss, iters=iters, dt=dt)


def init(key, hidden, tied, gain=0.4):
    k = jax.random.split(key, 4)
    p = {"W1": jax.random.normal(k[0], (64, hidden)) * (2.0 / 8.0),
         "W2": jax.random.normal(k[1], (hidden, hidden)) * (gain / np.sqrt(hidden)),
         "b1": jnp.zeros(hidden), "b2": jnp.zeros(hidden),
         "R": jax.random.normal(k[2], (hidden, 10)) * (1.0 / np.sqrt(hidden)), "c": jnp.zeros(10)}
    if not tied:
        p["B"] = jax.random.normal(k[3], (hidden, hidden)) * (gain / np.sqrt(hidden))
    return p


def flat(g):
    return jnp.concatenate([v.ravel() for v in jax.tree_util.tree_leaves(g)])


def cosine(a, b):
    a, b = flat(a), flat(b)
    return a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b))


def alignment(net, p, x, y, a0, betas, ns):
    """cos(EP, implicit) for every (beta, N); the asymmetry; the free phase's residual."""
    _, gi = net.implicit_gradient(a0, p, x, y)
    out = {f"beta={b} N={n}": cosine(net.ep_gradient(a0, p, x, y, b, n)[1], gi) for b in betas for n in ns}
    a = net.solve(a0, p, x)
    return out, net.asymmetry(a, p, x), net.residual(a, p, x)


def accuracy(net, p, x, y, hidden):
    a = net.solve(jnp.zeros((x.shape[0], 2 * hidden)), p, x)
    return jnp.mean(jnp.argmax(a[:, hidden:] @ p["R"] + p["c"], -1) == y)


def train(net, p, args, xtr, ytr, homeo, key):
    opt = optax.adam(args.lr)
    a0 = jnp.zeros((args.batch, 2 * args.hidden))

    def step(carry, k):
        p, st = carry
        ki, kh = jax.random.split(k)
        idx = jax.random.choice(ki, xtr.shape[0], (args.batch,), replace=False)
        x, y = xtr[idx], jax.nn.one_hot(ytr[idx], 10)
        value, g, info = net.ep_gradient(a0, p, x, y, args.train_beta, args.train_n)
        if homeo > 0:
            gh = jax.grad(lambda q: net.homeostatic_loss(info["a"], q, x, kh))(p)
            g = jax.tree_util.tree_map(lambda u, v: u + homeo * v, g, gh)
        up, st = opt.update(g, st, p)
        return (optax.apply_updates(p, up), st), value

    (p, _), losses = jax.jit(lambda p, ks: jax.lax.scan(step, (p, opt.init(p)), ks))(
        p, jax.random.split(key, args.steps))
    return p, losses


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--iters", type=int, default=200, help="fixed-point iterations per phase")
    ap.add_argument("--dt", type=float, default=1.0, help="damping step of the fixed-point iteration")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--train-beta", type=float, default=0.2)
    ap.add_argument("--train-n", type=int, default=4)
    ap.add_argument("--homeo", type=float, default=1.0, help="homeostatic loss coefficient")
    ap.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.5])
    ap.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 6])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/eqprop_digits")
    args = ap.parse_args(argv)
    if min(args.hidden, args.iters, args.steps, args.batch, args.train_n, *args.ns) < 1:
        ap.error("--hidden, --iters, --steps, --batch, --train-n and --ns must be >= 1")
    if min(args.betas + [args.train_beta]) <= 0 or args.homeo < 0:
        ap.error("betas must be > 0 and --homeo >= 0")
    os.makedirs(args.out, exist_ok=True)

    xtr, ytr, xte, yte = load(args.seed)
    xe, ye = xte[:args.batch], jax.nn.one_hot(yte[:args.batch], 10)
    a0 = jnp.zeros((args.batch, 2 * args.hidden))
    cols = [f"beta={b} N={n}" for b in args.betas for n in args.ns]
    print(f"digits, {args.hidden}-{args.hidden} recurrent net, {args.steps} EP steps "
          f"(N={args.train_n}, beta={args.train_beta}), homeostasis coefficient {args.homeo}")
    print("cosine(EP, implicit gradient) on a held-out batch:")
    print(f"{'network':<22} {'when':<6} " + " ".join(f"{c:>14}" for c in cols)
          + f" {'asymmetry':>10} {'residual':>9} {'test acc':>8}")
    results = {}
    for name, tied, homeo in [("symmetric", True, 0.0), ("asymmetric", False, 0.0),
                              ("asymmetric+homeostasis", False, args.homeo)]:
        net = make_net(args.hidden, tied, args.iters, args.dt)
        p0 = init(jax.random.key(args.seed), args.hidden, tied)
        measure = jax.jit(lambda p: alignment(net, p, xe, ye, a0, args.betas, args.ns))
        p1, losses = train(net, p0, args, xtr, ytr, homeo, jax.random.key(args.seed + 1))
        for when, p in (("start", p0), ("end", p1)):
            cos, asym, res = measure(p)
            acc = float(accuracy(net, p, xte, yte, args.hidden))
            results[f"{name} {when}"] = {**{c: float(cos[c]) for c in cols}, "asymmetry": float(asym),
                                         "residual": float(res), "test_acc": acc}
            print(f"{name:<22} {when:<6} " + " ".join(f"{float(cos[c]):14.4f}" for c in cols)
                  + f" {float(asym):10.4f} {float(res):9.1e} {acc:8.3f}")
    with open(os.path.join(args.out, "eqprop_digits.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
