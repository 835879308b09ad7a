"""AIR: seconds per fixed number of training steps, per presence estimator (compilation included).

    .venv/bin/python bench/bench_air.py [--steps 100] [--batch 32]

Pyro comparison (TraceGraph_ELBO, TraceEnum_ELBO on the same data, sizes and initial parameters):
``bench/bench_air_pyro.py``.
"""
import argparse
import time

import jax
import optax

from ppl.models import air, data
from ppl.models.losses import make_loss
from ppl.transforms import expectation
from ppl.transforms import objectives as O
from ppl.transforms.fit import fit


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    ds = data.load("digits")
    m = air.AIR()
    x, c = m.make_canvases(jax.random.key(0), ds.images(ds.x_train), 1000)
    p = m.init_params(jax.random.key(1))
    print(f"{'estimator':8s} {'s per ' + str(a.steps) + ' steps incl. compile':>30s} {'count acc':>9s}")
    for label, est in air.estimator_presets().items():
        loss = make_loss(expectation(O.elbo(m.model, m.guide), estimators=est))
        params = {**p, "baseline": m.init_baseline(jax.random.key(3))} if label == "score-baseline" else p
        t = time.perf_counter()
        r = fit(loss, optax.adam(1e-3), params, key=jax.random.key(2), num_steps=a.steps, data=x, batch_size=a.batch,
                chunk=a.steps, progress=False, compiler_options=air.compiler_options())
        total = time.perf_counter() - t  # includes the compilation of fit's chunk
        acc = float(m.count_accuracy(jax.random.key(4), r.params, x[:300], c[:300]))
        print(f"{label:8s} {total:30.1f} {acc:9.3f}", flush=True)


if __name__ == "__main__":
    main()
