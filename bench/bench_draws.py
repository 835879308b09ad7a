"""MVD's Normal rule: non-finite draws in 1e8, and its cost, before and after the open-interval fix.

"before" is the rule as it was (``R = jax.random.rayleigh``, i.e. ``sqrt(-2 log u)`` with ``u``
uniform on ``[0, 1)``: infinite when ``u == 0``, probability ``2^-23`` in float32); "after" is
``ppl.estimators.MVD_FAMILIES["Normal"]`` (``R`` from ``estimators/_draws.py``: ``u`` on the
open grid ``(m + 1/2) 2^-23``). Both draw every element's ``p+``/``p-`` values (``mu +- s R``
and ``mu + s sign(eps) chi_3``) from the same keys, in chunks; the count is of non-finite values
among them. Timing: the jitted rule on ``--time-n`` elements, after compilation, median of
``--reps`` calls with block_until_ready, both measured in this one run, interleaved.

    python bench/bench_draws.py                       # 1e8 draws (recorded; ~1 min on 2 cores)
    python bench/bench_draws.py --draws 1e7           # quicker
"""
from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from ppl.estimators import MVD_FAMILIES

_SQRT2PI = math.sqrt(2 * math.pi)


def normal_rule_before(key, c, x):
    """The rule before the fix, verbatim but for the Rayleigh draw's source."""
    loc, scale = c["loc"], c["scale"]
    k1, k2 = jax.random.split(key)
    r = jax.random.rayleigh(k1, 1.0, x.shape, x.dtype)
    eps = (x - loc) / scale
    chi3 = jnp.sqrt(eps ** 2 + jnp.sum(jax.random.normal(k2, (2,) + x.shape, x.dtype) ** 2, 0))
    return {"loc": (1 / (scale * _SQRT2PI), loc + scale * r, loc - scale * r),
            "scale": (1 / scale, loc + scale * jnp.sign(eps) * chi3, x)}


RULES = {"before": normal_rule_before, "after": MVD_FAMILIES["Normal"]}


def _inputs(key, n):
    loc, scale = jnp.full((n,), 0.3), jnp.full((n,), 1.7)
    return {"loc": loc, "scale": scale}, loc + scale * jax.random.normal(key, (n,))


def count_nonfinite(rule, key, draws, chunk):
    @jax.jit
    def one(k):
        kx, kr = jax.random.split(k)
        c, x = _inputs(kx, chunk)
        out = rule(kr, c, x)
        vals = [out["loc"][1], out["loc"][2], out["scale"][1]]
        return (sum(jnp.sum(~jnp.isfinite(v)) for v in vals),
                jnp.sum(~jnp.isfinite(vals[0]) | ~jnp.isfinite(vals[1])))

    bad = elements = 0
    for i in range(draws // chunk):
        b, e = one(jax.random.fold_in(key, i))
        bad, elements = bad + int(b), elements + int(e)
    return bad, elements


def timing(n, reps):
    c, x = _inputs(jax.random.key(1), n)
    fns = {name: jax.jit(lambda k, c, x, r=rule: r(k, c, x)) for name, rule in RULES.items()}
    for f in fns.values():
        jax.block_until_ready(f(jax.random.key(0), c, x))
    times = {name: [] for name in fns}
    for i in range(reps):
        for name, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(jax.random.key(i), c, x))
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=float, default=1e8, help="elements drawn per rule")
    p.add_argument("--chunk", type=float, default=1e7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-n", type=float, default=1e6)
    p.add_argument("--reps", type=int, default=15)
    a = p.parse_args()
    draws, chunk = int(a.draws), int(min(a.chunk, a.draws))
    draws -= draws % chunk
    print(f"MVD Normal rule, float32, {draws:.3g} elements (each: mu + s R, mu - s R, mu + s sign(eps) chi3)")
    key = jax.random.key(a.seed)
    for name, rule in RULES.items():
        t0 = time.perf_counter()
        bad, elems = count_nonfinite(rule, key, draws, chunk)
        print(f"  {name:6s}: {bad} non-finite values of {3 * draws:.3g} ({elems} elements with an "
              f"infinite mu +- s R; 2^-23 x {draws:.3g} = {draws * 2.0 ** -23:.1f} expected if u == 0 "
              f"is possible)  [{time.perf_counter() - t0:.1f} s]")
    t = timing(int(a.time_n), a.reps)
    print(f"time per call, {int(a.time_n):.3g} elements (median of {a.reps}): before {t['before'] * 1e3:.2f} ms, "
          f"after {t['after'] * 1e3:.2f} ms, after/before {t['after'] / t['before']:.3f}")


if __name__ == "__main__":
    main()
