"""A small fit() run in its own process, for the kill-and-resume test of test_fit.py.

usage: python _fit_worker.py OUT.npz [--checkpoint PATH] [--resume] [--sleep SECONDS]

Fits a Gaussian guide to NormalNormal by the ELBO (ADEV gradients, Adam), 60 steps in chunks
of 5; ``--sleep`` pauses after each chunk (a callback) so that the parent can kill the process
mid-run. Writes the final params and loss history to OUT.npz.
"""
import argparse
import time

import jax

from ppl.config import use_compilation_cache

use_compilation_cache()

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as nd  # noqa: E402
import optax  # noqa: E402

import ppl  # noqa: E402
from ppl.models.conjugate import NormalNormal  # noqa: E402
from ppl.transforms import expectation  # noqa: E402
from ppl.transforms import objectives as O  # noqa: E402
from ppl.transforms.fit import fit  # noqa: E402

NUM_STEPS, CHUNK = 60, 5


def guide(phi):
    return ppl.sample("mu", nd.Normal(phi["loc"], jax.nn.softplus(phi["s"])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--checkpoint")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--sleep", type=float, default=0.0)
    a = ap.parse_args()
    m = NormalNormal(0.0, 1.0, 0.5)
    y = jnp.array([0.5, 1.0, 0.8])
    E = expectation(O.elbo(m.model, guide))
    data = jnp.linspace(-1.0, 1.0, 12)  # minibatches too, so the resume must restore their order

    def loss(k, p, b):
        return -E.estimate(k, (y,), (p,)) + 1e-3 * jnp.sum(b) * p["loc"]

    def slow(step, state, losses):
        time.sleep(a.sleep)

    r = fit(loss, optax.adam(0.05), {"loc": 0.0, "s": 0.0}, key=jax.random.key(7), num_steps=NUM_STEPS,
            chunk=CHUNK, data=data, batch_size=4, checkpoint=a.checkpoint, resume=a.resume,
            callbacks=[slow], progress=False)
    np.savez(a.out, loc=np.asarray(r.params["loc"]), s=np.asarray(r.params["s"]), history=r.history,
             step=np.asarray(r.state.step))


if __name__ == "__main__":
    main()
