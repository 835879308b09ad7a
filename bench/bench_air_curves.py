"""AIR learning curves per presence estimator: held-out ELBO and count accuracy against training seconds.

    .venv/bin/python bench/bench_air_curves.py [--budget-s 160 | --steps N] [--estimators score,enum,...]
        [--out runs/air_curves] [--eval-every 250] [--batch 32] [--seed 0] [--quick]

Canvases as bench_air.py makes them (16x16, 0-3 bundled 8x8 digits): 2000 for training from
the digits' training images, 500 held out from their test images. Each estimator preset of
``air.estimator_presets()`` trains from the same initialization with Adam 1e-3 on
``ppl.models.losses.make_loss`` (``score-baseline`` also learns its baseline ``b(x)``) for ``--budget-s``
seconds of training (or ``--steps``). Every ``--eval-every`` steps (one chunk of ``fit``) it
records the training seconds so far, the mean training ELBO of the chunk, the held-out ELBO
(one guide draw per held-out canvas, the same key at every point) and the held-out count
accuracy (the inferred count is the number of leading present steps).

Timing: the first chunk includes XLA's compilation; it is counted as one steady chunk (the
median of the others) and the difference is reported as ``compile_s``. Evaluation time is not
counted. The load average (``os.getloadavg``) before and after each estimator is recorded:
the machine may be shared.

Writes ``air_curves.json`` and ``air_curves.png`` (ELBO and count accuracy against seconds, one
line per estimator) into ``--out`` and prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np
import optax

from ppl.estimators import Baseline
from ppl.models import air, data
from ppl.models.losses import make_loss
from ppl.transforms import expectation
from ppl.transforms import objectives as O
from ppl.transforms.fit import fit


class _OutOfTime(Exception):
    pass


def _evaluate(params, x, counts, key, m):
    lw, n, _ = m.infer(key, params, x)
    n, counts = np.asarray(n).astype(int), np.asarray(counts)
    confusion = np.zeros((4, 4), int)
    np.add.at(confusion, (counts, np.clip(n, 0, 3)), 1)
    return float(np.mean(lw)), float(np.mean(n == counts)), confusion


def run_one(label, est, p0, m, x, xt, ct, a):
    """Train one preset; returns its curve as a dict."""
    params = dict(p0)
    if any(isinstance(e, Baseline) for e in est.values()):
        params["baseline"] = m.init_baseline(jax.random.key(100 + a.seed))
    loss = make_loss(expectation(O.elbo(m.model, m.guide), estimators=est))
    eval_key = jax.random.key(7)
    e0, acc0, _ = _evaluate(params, xt, ct, eval_key, m)
    points = [{"step": 0, "seconds": 0.0, "train_elbo": None, "test_elbo": e0, "count_accuracy": acc0}]
    chunks: list[float] = []  # raw wall-clock seconds of each chunk (the first includes compilation)
    last = {"t": time.perf_counter(), "state": None}

    def seconds():  # training seconds so far, the first chunk counted as a steady one
        return float(np.median(chunks[1:])) + sum(chunks[1:]) if len(chunks) > 1 else 0.0

    def callback(step, state, losses):
        chunks.append(time.perf_counter() - last["t"])
        last["state"] = state
        e, acc, conf = _evaluate(state.params, xt, ct, eval_key, m)
        points.append({"step": int(step), "seconds": None, "train_elbo": float(-np.mean(losses)),
                       "test_elbo": e, "count_accuracy": acc})
        last["confusion"] = conf.tolist()
        if a.progress:
            print(f"  {label} step {step} chunk {chunks[-1]:.1f}s held-out ELBO {e:.2f} count acc {acc:.3f}",
                  flush=True)
        if a.steps is None and len(chunks) >= 2 and seconds() >= a.budget_s:
            raise _OutOfTime
        last["t"] = time.perf_counter()

    load_before = os.getloadavg()
    num_steps = a.steps if a.steps is not None else 10**9
    try:
        res = fit(loss, optax.adam(a.lr), params, key=jax.random.key(3 + a.seed), num_steps=num_steps, data=x,
                  batch_size=a.batch, chunk=a.eval_every, progress=False, callbacks=[callback],
                  compiler_options=air.compiler_options())
        state = res.state
    except _OutOfTime:
        state = last["state"]
    load_after = os.getloadavg()
    steady = float(np.median(chunks[1:])) if len(chunks) > 1 else chunks[0]  # one chunk without compilation
    total = 0.0
    for j, pt in enumerate(points[1:]):
        total += steady if j == 0 else chunks[j]
        pt["seconds"] = total
    return {"compile_s": chunks[0] - steady if len(chunks) > 1 else None,
            "seconds_per_100_steps": 100 * total / int(state.step), "steps": int(state.step), "points": points,
            "chunk_seconds_raw": chunks, "final_confusion_true_by_inferred": last.get("confusion"),
            "load_avg_before": load_before, "load_avg_after": load_after}


def _plot(path, curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, c in curves.items():
        t = [p["seconds"] for p in c["points"]]
        ax1.plot(t, [p["test_elbo"] for p in c["points"]], label=label)
        ax2.plot(t, [p["count_accuracy"] for p in c["points"]], label=label)
    elbos = [p["test_elbo"] for c in curves.values() for p in c["points"]]
    top = max(elbos) + 2  # the initial ELBO (about -200) would flatten the rest: show the top 50 nats
    ax1.set(xlabel="training seconds (compilation excluded)", ylabel="held-out ELBO (nats per canvas)",
            title="AIR: held-out ELBO", ylim=(max(min(elbos), top - 50), top))
    ax2.axhline(0.25, color="gray", ls=":", lw=1, label="chance (0.25)")
    ax2.set(xlabel="training seconds (compilation excluded)", ylabel="held-out count accuracy",
            title="AIR: count accuracy", ylim=(0, 1))
    ax1.legend(), ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _at(points, t):
    """The last point recorded at or before ``t`` seconds."""
    before = [p for p in points if p["seconds"] <= t]
    return before[-1] if before else points[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--budget-s", type=float, default=160.0,
                   help="training seconds per estimator, compilation excluded (default 160)")
    g.add_argument("--steps", type=int, default=None, help="a fixed number of steps per estimator instead")
    ap.add_argument("--estimators", default=None,
                    help="comma-separated presets of air.estimator_presets() (default: all)")
    ap.add_argument("--out", default="runs/air_curves")
    ap.add_argument("--eval-every", type=int, default=250, help="steps per chunk between evaluations")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: hidden 16, 64/32 canvases, 2 chunks of 2 steps")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    a = ap.parse_args(argv)
    presets = air.estimator_presets()
    labels = list(presets) if a.estimators is None else [s.strip() for s in a.estimators.split(",") if s.strip()]
    unknown = [s for s in labels if s not in presets]
    if unknown:
        ap.error(f"--estimators: unknown {unknown}; choose from {', '.join(presets)}")
    if a.quick:
        a.steps, a.eval_every, a.batch = 4, 2, 4
    if a.eval_every < 1 or (a.steps is not None and a.steps < 1) or a.budget_s <= 0:
        ap.error("--eval-every, --steps and --budget-s must be positive")
    m = air.AIR(hidden=16) if a.quick else air.AIR()
    n_train, n_test = (64, 32) if a.quick else (2000, 500)

    ds = data.load("digits")
    x, _ = m.make_canvases(jax.random.key(0), ds.images(ds.x_train), n_train)
    xt, ct = m.make_canvases(jax.random.key(1), ds.images(ds.x_test), n_test)
    p0 = m.init_params(jax.random.key(2 + a.seed))
    budget = f"{a.steps} steps" if a.steps is not None else f"{a.budget_s:g} s"
    print(f"AIR curves: {n_train} training / {n_test} held-out canvases, batch {a.batch}, Adam {a.lr:g}, "
          f"{budget} per estimator, evaluation every {a.eval_every} steps; {m}", flush=True)

    curves = {}
    for label in labels:
        curves[label] = c = run_one(label, presets[label], p0, m, x, xt, ct, a)
        fin = c["points"][-1]
        comp = "n/a" if c["compile_s"] is None else f"{c['compile_s']:.0f}"
        print(f"{label:15s} compile {comp:>4s} s  {c['seconds_per_100_steps']:5.2f} s/100 steps  "
              f"{c['steps']:6d} steps  held-out ELBO {fin['test_elbo']:8.2f}  count accuracy "
              f"{fin['count_accuracy']:.3f}  load {c['load_avg_before'][0]:.1f}->{c['load_avg_after'][0]:.1f}",
              flush=True)

    os.makedirs(a.out, exist_ok=True)
    meta = {"config": {**vars(a), "air": dataclasses.asdict(m),
                       "train_canvases": n_train, "test_canvases": n_test},
            "jax": jax.__version__, "cpu_count": os.cpu_count()}
    path = os.path.join(a.out, "air_curves.json")
    with open(path, "w") as f:
        json.dump({**meta, "curves": curves}, f, indent=1)
    png = _plot(os.path.join(a.out, "air_curves.png"), curves)

    horizon = min(max(p["seconds"] for p in c["points"]) for c in curves.values())
    marks = [horizon * q for q in (0.25, 0.5, 1.0)]
    print("\n| estimator | compile s | s / 100 steps | "
          + " | ".join(f"at {m:.0f} s: steps, ELBO, acc" for m in marks) + " | final: steps, ELBO, acc |")
    print("|---|---:|---:|" + "---|" * (len(marks) + 1))
    for label, c in curves.items():
        cells = []
        for m in marks + [float("inf")]:
            p = _at(c["points"], m)
            cells.append(f"{p['step']}, {p['test_elbo']:.1f}, {p['count_accuracy']:.2f}")
        comp = "n/a" if c["compile_s"] is None else f"{c['compile_s']:.0f}"
        print(f"| {label} | {comp} | {c['seconds_per_100_steps']:.2f} | " + " | ".join(cells) + " |")
    print(f"\nwrote {path} and {png}")


if __name__ == "__main__":
    main()
