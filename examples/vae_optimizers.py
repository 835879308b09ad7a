"""The VAE on digits trained with each optimizer of the main command; ELBO against wall-clock time.

Same model, objective (ELBO, reparameterized), initialization, minibatches and steps as
``python -m ppl --optimizer NAME``; the training loss (minus the minibatch ELBO per example) is
recorded after every chunk of steps with the wall-clock time since the end of the first chunk
(which includes compiling the training step, reported separately: it depends on the machine's
load and JAX's compilation cache, and would otherwise dominate the plot). Each optimizer runs with its
flags from --runs (NAME[:FLAG=VALUE,...]; the main command's flags without dashes).

    python examples/vae_optimizers.py --out runs/vae_optimizers
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from ppl.models import cli
from ppl.transforms.fit import fit

RUNS = ("adam;diffgrad;mfac:lr=0.0001,mfac-grads=32;rm3:lr=0.01;sgd:lr=0.01,momentum=0.9")


def parse_runs(text):
    runs = []
    for spec in text.split(";"):
        name, _, flags = spec.partition(":")
        argv = ["--optimizer", name]
        for kv in filter(None, flags.split(",")):
            k, v = kv.split("=")
            argv += [f"--{k}", v]
        runs.append((spec, argv))
    return runs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--runs", default=RUNS, help="NAME[:flag=value,...] separated by ';'")
    ap.add_argument("--tiny", action="store_true", help="latent 3, hidden 16 (smoke test)")
    ap.add_argument("--out", default="runs/vae_optimizers")
    a = ap.parse_args(argv)
    size = ["--latent", "3", "--hidden", "16", "--eval-particles", "4"] if a.tiny else []
    curves = {}
    print(f"VAE on digits, ELBO, {a.steps} steps of batch 64")
    print(f"{'run':<40} {'1st chunk s':>11} {'then s':>7} {'final loss':>10} {'test ELBO':>10}")
    for spec, opt_argv in parse_runs(a.runs):
        args = cli.build_parser().parse_args(opt_argv + size + ["--steps", str(a.steps)])
        task, E, _ = cli.setup(args)
        optimizer = cli.make_optimizer(args)
        k_init, k_fit, k_eval = jax.random.split(jax.random.key(args.seed), 3)
        points = []
        t0 = time.time()

        def record(step, state, losses, points=points, t0=t0):
            points.append((time.time() - t0, step, float(np.mean(losses))))

        res = fit(task.loss(E), optimizer, task.init(k_init), key=k_fit, num_steps=a.steps, data=task.train,
                  batch_size=args.batch_size, chunk=min(a.chunk, a.steps), callbacks=[record], progress=False)
        elbo = task.metrics(k_eval, res.params)["test_elbo"]
        pts = np.array(points)
        first = pts[0, 0]
        pts[:, 0] -= first
        curves[spec] = pts
        print(f"{spec:<40} {first:>11.1f} {pts[-1, 0]:>7.1f} {points[-1][2]:>10.3f} {elbo:>10.3f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(a.out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for spec, pts in curves.items():
        ax.plot(pts[:, 0], -pts[:, 2], marker=".", label=spec)
    ax.set(xlabel="wall-clock seconds after the first chunk (compilation excluded)", ylabel="training ELBO per example (chunk mean)")
    ax.legend(fontsize=7)
    ax.grid(True)
    fig.tight_layout()
    path = os.path.join(a.out, "vae_optimizers.png")
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
