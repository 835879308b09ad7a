"""Hessian alignment on "coloured digits": ERM against the HGP and Hutchinson penalties
(Hemati et al. 2023) on a two-environment split with a spurious colour feature.

The Colored-MNIST construction of the IRM / Fishr / HGP papers on scikit-learn's 8x8 digits:
the binary label is ``digit < 5``, flipped with probability 0.25 (so the shape predicts it with
at most 75% accuracy); the colour equals the label flipped with probability ``e``, and the
image goes to the red or the green channel by colour (2 x 64 inputs). Training environments:
the two halves of the training split with ``e = 0.2`` and ``0.1`` (colour-label correlation
0.8 / 0.9); test: the held-out digits with ``e = 0.9`` (correlation reversed). A model that
uses the colour scores well on training and badly on test.

Model: MLP 128 -> hidden -> hidden (ReLU) -> 1 logit; the penalties act on the classifier head
only (its weights and bias), the featurizer is reached through the closure. Full-batch Adam;
as in the papers' scripts the penalty weight is 1 for ``--anneal`` steps, then ``--weight``
(the loss is then divided by the weight), with L2 ``--l2``. Reported over ``--restarts``
initializations: train and test accuracy (mean and sd).

    python examples/hgp_colored_digits.py --out runs/hgp
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl.backends.alignment import hgp_penalty, hutchinson_penalty
from ppl.models.data import load_digits


def make_environment(x, digits, e, rng):
    labels = (digits < 5).astype(np.float32)
    labels = np.abs(labels - (rng.random(len(labels)) < 0.25))
    colors = np.abs(labels - (rng.random(len(labels)) < e))
    images = np.concatenate([x * (colors == 0)[:, None], x * (colors == 1)[:, None]], axis=1)
    return jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.float32)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["erm", "hgp", "hutchinson"])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--anneal", type=int, default=190)
    p.add_argument("--weight", type=float, default=1e4)
    p.add_argument("--alpha", type=float, default=1.0, help="Hessian(-gradient) term")
    p.add_argument("--beta", type=float, default=1.0, help="gradient term")
    p.add_argument("--probes", type=int, default=30, help="Hutchinson probes")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--l2", type=float, default=1e-3)
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--out", default="runs/hgp")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for m in args.methods:
        if m not in ("erm", "hgp", "hutchinson"):
            raise SystemExit(f"unknown method {m!r}: choose from erm, hgp, hutchinson")

    ds = load_digits()
    h = args.hidden

    def init(key):
        k = jax.random.split(key, 3)
        glorot = lambda kk, a, b: jax.random.uniform(kk, (a, b), minval=-1, maxval=1) * jnp.sqrt(6 / (a + b))  # noqa: E731
        return {"body": {"w1": glorot(k[0], 128, h), "b1": jnp.zeros(h), "w2": glorot(k[1], h, h), "b2": jnp.zeros(h)},
                "head": {"w": glorot(k[2], h, 1)[:, 0], "b": jnp.zeros(())}}

    def feats(body, xb):
        z = jax.nn.relu(xb @ body["w1"] + body["b1"])
        return jax.nn.relu(z @ body["w2"] + body["b2"])

    def nll(head, f, yb):
        z = f @ head["w"] + head["b"]
        return jnp.mean(jax.nn.softplus(z) - yb * z)

    def acc(params, xb, yb):
        z = feats(params["body"], xb) @ params["head"]["w"] + params["head"]["b"]
        return jnp.mean((z > 0) == (yb > 0.5))

    results = {m: [] for m in args.methods}
    for restart in range(args.restarts):
        rng = np.random.default_rng(restart)
        half = len(ds.x_train) // 2
        envs = [make_environment(ds.x_train[:half], ds.y_train[:half], 0.2, rng),
                make_environment(ds.x_train[half:], ds.y_train[half:], 0.1, rng)]
        x_test = np.concatenate([ds.x_valid, ds.x_test])
        y_test = np.concatenate([ds.y_valid, ds.y_test])
        test = make_environment(x_test, y_test, 0.9, rng)
        for method in args.methods:
            opt = optax.adam(args.lr)

            def loss(params, t, key, method=method):
                fs = [feats(params["body"], xb) for xb, _ in envs]
                risks = lambda head: jnp.stack([nll(head, f, yb) for f, (_, yb) in zip(fs, envs)])  # noqa: E731
                total = jnp.mean(risks(params["head"]))
                total += args.l2 * sum(jnp.sum(w ** 2) for w in jax.tree_util.tree_leaves(params))
                if method == "erm":
                    return total
                if method == "hgp":
                    pen = hgp_penalty(risks, params["head"], alpha=args.alpha, beta=args.beta)
                else:
                    pen = hutchinson_penalty(risks, params["head"], key=key, num_samples=args.probes,
                                             alpha=args.alpha, beta=args.beta)
                w = jnp.where(t >= args.anneal, args.weight, 1.0)
                return (total + w * pen) / jnp.maximum(w, 1.0)

            @jax.jit
            def train(params, key):
                def body(carry, t):
                    prm, s = carry
                    g = jax.grad(loss)(prm, t, jax.random.fold_in(key, t))
                    u, s = opt.update(g, s, prm)
                    return (optax.apply_updates(prm, u), s), None
                (prm, _), _ = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(args.steps))
                return prm

            params = train(init(jax.random.key(restart)), jax.random.key(1000 + restart))
            tr = float(np.mean([acc(params, xb, yb) for xb, yb in envs]))
            te = float(acc(params, *test))
            results[method].append((tr, te))
            print(f"restart {restart} {method:<11} train acc {tr:.3f}  test acc {te:.3f}", flush=True)

    print(f"\ncoloured digits (train colour-label corr 0.8/0.9, test 0.1; label noise 0.25), "
          f"{args.restarts} restarts, {args.steps} Adam steps")
    print(f"{'method':<12} {'train acc':>16} {'test acc':>16}")
    for m, r in results.items():
        r = np.asarray(r)
        print(f"{m:<12} {r[:, 0].mean():8.3f} +- {r[:, 0].std():.3f} {r[:, 1].mean():8.3f} +- {r[:, 1].std():.3f}")


if __name__ == "__main__":
    main()
