"""XLA:CPU-specific tuning (``transforms/_xla_cpu.py``): each piece off and on, interleaved in one process.

    .venv/bin/python bench/bench_xla_cpu.py [--quick]

- Unrolled Threefry: ``normal`` of ``--draws`` numbers (default 4M), JAX's own lowering
  (``jax.random.normal``) against the unrolled hash (same numbers).
- The same piece inside CBO: one ``minimize`` (shifted Rastrigin, anisotropic noise,
  ``bench_cbo.py``'s settings: 1000 steps, 16 seeds vmapped) with ``_xla_cpu``'s CPU switch off
  (``jax.random``) and on.
- Fused dots: AIR's value-and-gradient (ScoreFunction presence, batch ``--batch``) compiled
  without and with ``CPU_FUSED_DOTS``.

Median over ``--rounds`` alternating rounds; "on / off" is the time with the piece over the time
without. CBO's coordinate-major layout has no switch (the step is written for it): its A/B,
measured when it was introduced, is in BENCHMARKS.md.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from ppl.transforms import _xla_cpu
from ppl.transforms import cbo as C


def _time(fn, reps):
    jax.block_until_ready(fn())
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t) / reps * 1e3


def _ab(off, on, rounds, reps):
    a, b = [], []
    for _ in range(rounds):
        a.append(_time(off, reps))
        b.append(_time(on, reps))
    return statistics.median(a), statistics.median(b)


def _compiled(make, cpu_switch):
    """``make()``'s jitted function compiled with ``_xla_cpu``'s CPU switch as given."""
    jax.clear_caches()
    saved = _xla_cpu._on_cpu
    _xla_cpu._on_cpu = lambda: cpu_switch
    try:
        fn, args = make()
        return fn.lower(*args).compile()
    finally:
        _xla_cpu._on_cpu = saved


def threefry_rows(a):
    key = jax.random.key(0)
    off = jax.jit(lambda k: jax.random.normal(k, (a.draws,)))
    on = jax.jit(lambda k: _xla_cpu.normal(k, (a.draws,)))
    assert bool(jnp.all(off(key) == on(key))), "the unrolled hash must draw jax.random's numbers"
    yield f"normal, {a.draws:,} numbers", *_ab(lambda: off(key), lambda: on(key), a.rounds, a.reps)


def cbo_rows(a):
    def rastrigin(x):
        z = x - 1.0
        return jnp.mean(z ** 2 - 10 * jnp.cos(2 * jnp.pi * z) + 10)

    for d, n in ((2, 50), (10, 100)):
        cbo = C.CBO(rastrigin, C.CBOConfig(dt=0.01, sigma=5.0, alpha=10.0, alpha_factor=1.01), noise=C.ANISOTROPIC)
        term = C.Termination(max_steps=a.steps)
        keys = jax.random.split(jax.random.key(1), a.seeds)
        x0 = jax.random.uniform(jax.random.key(2), (a.seeds, n * d), minval=-3.0, maxval=3.0).reshape(a.seeds, n, d)

        def make():
            return jax.jit(jax.vmap(lambda k, x: C._minimize(cbo, k, x, term)[0].consensus)), (keys, x0)

        off = _compiled(make, False)
        on = _compiled(make, True)
        t_off, t_on = _ab(lambda: off(keys, x0), lambda: on(keys, x0), a.rounds, 1)
        yield f"CBO d={d} N={n}, ms per run ({a.seeds} vmapped)", t_off / a.seeds, t_on / a.seeds


def fused_dots_rows(a):
    from ppl.models import air, data
    from ppl.models.losses import make_loss
    from ppl.transforms import expectation
    from ppl.transforms import objectives as O

    ds = data.load("digits")
    m = air.AIR()
    x, _ = m.make_canvases(jax.random.key(0), ds.images(ds.x_train), a.batch)
    p = m.init_params(jax.random.key(1))
    loss = make_loss(expectation(O.elbo(m.model, m.guide), estimators=air.estimator_presets()["score"]))
    vg = jax.value_and_grad(loss, argnums=1)
    key = jax.random.key(2)
    off = jax.jit(vg)
    on = jax.jit(vg, compiler_options=_xla_cpu.CPU_FUSED_DOTS)
    yield f"AIR value-and-gradient, batch {a.batch}", *_ab(lambda: off(key, p, x), lambda: on(key, p, x),
                                                            a.rounds, a.reps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=4_000_000)
    ap.add_argument("--steps", type=int, default=1000, help="CBO steps")
    ap.add_argument("--seeds", type=int, default=16, help="CBO runs vmapped")
    ap.add_argument("--batch", type=int, default=64, help="AIR canvases per value-and-gradient")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, 2 rounds")
    a = ap.parse_args()
    if a.quick:
        a.draws, a.steps, a.seeds, a.batch, a.rounds, a.reps = 100_000, 50, 2, 8, 2, 2
    if jax.default_backend() != "cpu":
        print(f"backend {jax.default_backend()}: these pieces apply on XLA:CPU only; nothing to measure")
        return
    print(f"{'piece':48s} {'off ms':>9s} {'on ms':>9s} {'on / off':>8s}")
    for rows in (threefry_rows, cbo_rows, fused_dots_rows):
        for name, off, on in rows(a):
            print(f"{name:48s} {off:9.2f} {on:9.2f} {on / off:8.2f}", flush=True)


if __name__ == "__main__":
    main()
