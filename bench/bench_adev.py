"""ADEV overhead: ELBO value-and-gradient of a reparameterized Gaussian guide, ppl vs
hand-written JAX of the same computation; and enumeration cost vs K evaluations.

Run: .venv/bin/python bench/bench_adev.py [--only elbo|enum]   (prints tables with ratios)

Enumeration: an ``Enum`` site's K continuation calls one at a time (``Enum(batch_size=1)``, a
``lax.map`` loop), in vmapped pairs (2, the default) and all K in one ``vmap``, against K single
evaluations of the continuation (a 256x256 matrix product and tanh).

"same compiled ops": whether the optimized HLO modules of the two programs hold the same
multiset of (shape, opcode) instructions, a timing-free check that ppl adds no work.
"""
import argparse
import collections
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd

import ppl
from ppl.transforms import expectation
from ppl.transforms.vi import density, sim

D, H, X = 10, 64, 50


def init(key):
    k = jax.random.split(key, 3)
    return {"W": jax.random.normal(k[0], (D, X)) * 0.1, "enc": jax.random.normal(k[1], (X, 2 * D)) * 0.1}


def model(p, x):
    z = ppl.sample("z", nd.Normal(jnp.zeros((x.shape[0], D)), 1.0).to_event(1))
    ppl.sample("x", nd.Normal(z @ p["W"], 1.0).to_event(1), obs=x)


def guide(p, x):
    h = x @ p["enc"]
    ppl.sample("z", nd.Normal(h[:, :D], jax.nn.softplus(h[:, D:])).to_event(1))


def ppl_elbo_once(p, x, key):
    def obj(p):
        q = sim(guide, p, x)
        return density(model, q.choices, p, x) - q.score
    return expectation(obj).estimate(key, p)


def hand_elbo(p, x, key):
    """The same computation written by hand: the same NumPyro densities, explicit reparam."""
    h = x @ p["enc"]
    loc, scale = h[:, :D], jax.nn.softplus(h[:, D:])
    eps = jax.random.normal(key, loc.shape)
    z = loc + scale * eps
    logq = jnp.sum(nd.Normal(loc, scale).to_event(1).log_prob(z))
    logp = (jnp.sum(nd.Normal(jnp.zeros((x.shape[0], D)), 1.0).to_event(1).log_prob(z))
            + jnp.sum(nd.Normal(z @ p["W"], 1.0).to_event(1).log_prob(x)))
    return logp - logq


def compiled_ops(f, *args):
    """Multiset of (shape, opcode) over every instruction of the optimized HLO module."""
    ops = collections.Counter()
    for line in f.lower(*args).compile().as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%\S+ = (\S+) ([\w\-]+)\(", line)
        if m:
            ops[m.groups()] += 1
    return ops


def compile_time(f, *args):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t0


def race(fa, fb, args, rounds=15, reps=200):
    """Median per-call time of each, alternating rounds so machine drift hits both alike."""
    ta, tb = [], []
    for _ in range(rounds):
        for f, out in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            for _ in range(reps):
                r = f(*args)
            jax.block_until_ready(r)
            out.append((time.perf_counter() - t0) / reps)
    return float(np.median(ta)), float(np.median(tb))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["elbo", "enum"], default=None, help="run one of the two tables")
    a = ap.parse_args()
    key = jax.random.key(0)
    if a.only != "enum":
        elbo_table(key)
    if a.only != "elbo":
        enum_table(key)


def elbo_table(key):
    p = init(key)
    print(f"{'batch':>6} {'hand ms':>9} {'ppl ms':>9} {'ratio':>6} {'hand compile s':>15} {'ppl compile s':>14} {'ratio':>6} {'same compiled ops':>17}")
    for b in (64, 128, 256, 512, 1024):
        x = jax.random.normal(jax.random.key(b), (b, X))
        hand = jax.jit(jax.value_and_grad(hand_elbo))
        mine = jax.jit(jax.value_and_grad(ppl_elbo_once))
        ch, cp = compile_time(hand, p, x, key), compile_time(mine, p, x, key)
        th, tp = race(hand, mine, (p, x, key))
        same = compiled_ops(hand, p, x, key) == compiled_ops(mine, p, x, key)
        print(f"{b:>6} {th*1e3:>9.3f} {tp*1e3:>9.3f} {tp/th:>6.2f} {ch:>15.3f} {cp:>14.3f} "
              f"{cp/ch:>6.2f} {'yes' if same else 'no':>17}", flush=True)


def enum_table(key):
    """Cost of an Enum site over K values vs one evaluation of its continuation."""
    from ppl.estimators import Enum

    xw = jax.random.normal(key, (256, 256))
    print(f"\n{'K':>4} {'one eval ms':>12} | cost / (K * one) with batch_size = {'1':>6} {'2':>6} {'K':>6}")
    for k in (2, 4, 8, 16):
        def obj(t, k=k):
            c = ppl.sample("c", nd.Categorical(logits=t))
            return jnp.sum(jnp.tanh(xw @ (xw * c.astype(jnp.float32))))

        def one(t):
            c = jnp.argmax(t)
            return jnp.sum(jnp.tanh(xw @ (xw * c.astype(jnp.float32))))

        t = jnp.zeros(k)
        f1 = jax.jit(jax.value_and_grad(one))
        compile_time(f1, t)
        ratios = []
        for b in (1, 2, k):
            E = expectation(obj, estimators={"c": Enum(batch_size=b)})
            fk = jax.jit(lambda t, E=E: E.value_and_grad(key, t))
            compile_time(fk, t)
            t1, tk = race(f1, fk, (t,), reps=20)
            ratios.append(tk / (k * t1))
        print(f"{k:>4} {t1*1e3:>12.3f} | {'':>32} " + " ".join(f"{r:>6.2f}" for r in ratios), flush=True)


if __name__ == "__main__":
    main()
