"""AIR on canvases of 0-3 digits: train with a chosen presence estimator; ELBO and count accuracy.

    .venv/bin/python examples/air_digits.py [--steps 300] [--presence score|enum|mvd|hybrid] [--out DIR]
"""
import argparse
import os

import jax
import optax

from ppl.models import _plots, air, data
from ppl.models.losses import make_loss
from ppl.transforms import expectation
from ppl.transforms import objectives as O
from ppl.transforms.fit import fit


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--presence", choices=["score", "enum", "mvd", "hybrid"], default="hybrid")
    ap.add_argument("--out", default="runs/example_air")
    ap.add_argument("--tiny", action="store_true", help="tiny networks (smoke test)")
    a = ap.parse_args()
    ds = data.load("digits")
    m = air.AIR(hidden=16 if a.tiny else 64)
    x, c = m.make_canvases(jax.random.key(0), ds.images(ds.x_train), 2000)
    xt, ct = m.make_canvases(jax.random.key(1), ds.images(ds.x_test), 300)
    params = m.init_params(jax.random.key(2))
    E = expectation(O.elbo(m.model, m.guide), estimators=air.estimator_presets()[a.presence])
    print(E.plan((params["theta"], x[:1]), (params["phi"], x[:1])))
    loss = make_loss(E)
    res = fit(loss, optax.adam(1e-3), params, key=jax.random.key(3), num_steps=a.steps, data=x,
              batch_size=4 if a.tiny else 32, chunk=min(100, max(a.steps, 1)),
              compiler_options=air.compiler_options())
    print(f"test ELBO {float(m.elbo(jax.random.key(4), res.params, xt)):.2f}  "
          f"count accuracy {float(m.count_accuracy(jax.random.key(5), res.params, xt, ct)):.3f}")
    os.makedirs(a.out, exist_ok=True)
    print(_plots.learning_curve(os.path.join(a.out, "air_learning_curve.png"), res.history))
    print(m.plot_boxes(os.path.join(a.out, "air_boxes.png"), res.params, xt[:8], ct[:8]))


if __name__ == "__main__":
    main()
