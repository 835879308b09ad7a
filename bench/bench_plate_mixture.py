"""A 2-component Gaussian mixture with N per-point assignments: ppl's per-element enumeration
along a plate against NumPyro's ``TraceEnum_ELBO`` with ``config_enumerate``.

The same model and guide in both libraries: component means ``locs ~ Normal(0, 5)`` (guide:
``Normal(m, softplus(s))``), per-point assignments ``z_i ~ Categorical(prior)`` and
``y_i ~ Normal(locs[z_i], 0.8)`` inside a plate of N; the guide's ``z_i ~ Categorical(l_i)``
is enumerated (ppl: ``Enum()`` at ``z``, per element along the plate; NumPyro:
``config_enumerate`` on the guide, ``TraceEnum_ELBO(max_plate_nesting=1)``). A second NumPyro
row marginalizes ``z`` in the model instead (its usual use; a different objective, the exact
marginal likelihood of y given locs, reported for scale). Step = one jitted value and gradient
of the negative ELBO in all parameters; median of ``--reps`` calls after compilation, the
libraries interleaved over ``--rounds`` rounds, all in this one run; the median and the minimum
over rounds are printed (on a shared machine the minimum is the least disturbed by other jobs).

Also printed: ppl's gradient cost relative to one evaluation of the objective at the same N,
two ways: the same jitted ``E.estimate`` (one sample of every choice, the per-point
Categorical draws included) and the objective's integrand at fixed choices (what one call of
the continuation computes, without sampling); the per-element enumeration's K = 2 calls
should keep the gradient within about K of it. And that the joint enumeration
(``Enum(plates=False)``) is refused at this N (2^N values).

    .venv/bin/python bench/bench_plate_mixture.py            # N = 200 (recorded)
    .venv/bin/python bench/bench_plate_mixture.py --n 20000 --reps 20   # where the arithmetic dominates
    .venv/bin/python bench/bench_plate_mixture.py --quick    # smaller and fewer repetitions
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as nd
from numpyro.infer import TraceEnum_ELBO

import ppl
from ppl.estimators import Enum, EstimatorError
from ppl.transforms import expectation
from ppl.transforms.vi import density, sim

PRIOR = jnp.array([0.4, -0.3])
SCALE = 0.8


def data(n, seed=0):
    r = np.random.default_rng(seed)
    return jnp.asarray(np.where(r.random(n) < 0.5, -1.5, 2.0) + SCALE * r.standard_normal(n), jnp.float32)


def init(n):
    return {"m": jnp.array([-0.5, 0.5]), "s": jnp.full(2, -2.0), "l": jnp.zeros((n, 2))}


# --- ppl ----------------------------------------------------------------------------------------

def ppl_model(y):
    locs = ppl.sample("locs", nd.Normal(0.0, 5.0).expand((2,)).to_event(1))
    with ppl.plate("data", y.shape[0]):
        z = ppl.sample("z", nd.Categorical(logits=PRIOR).expand((y.shape[0],)))
        ppl.sample("y", nd.Normal(locs[z], SCALE), obs=y)


def ppl_guide(p):
    ppl.sample("locs", nd.Normal(p["m"], jax.nn.softplus(p["s"])).to_event(1))
    with ppl.plate("data", p["l"].shape[0]):
        ppl.sample("z", nd.Categorical(logits=p["l"]))


def neg_elbo(y, p):
    q = sim(ppl_guide, p)
    return q.score - density(ppl_model, q.choices, y)


def integrand(y, p, choices):
    """One evaluation of what Enum's continuation computes: the negative ELBO's integrand at
    given choices (no sampling)."""
    return density(ppl_guide, choices, p) - density(ppl_model, choices, y)


# --- NumPyro ------------------------------------------------------------------------------------

def np_model(y):
    locs = numpyro.sample("locs", nd.Normal(0.0, 5.0).expand((2,)).to_event(1))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", nd.Categorical(logits=PRIOR))
        numpyro.sample("y", nd.Normal(locs[z], SCALE), obs=y)


def np_guide(y):
    m = numpyro.param("m", jnp.zeros(2))
    s = numpyro.param("s", jnp.zeros(2))
    numpyro.sample("locs", nd.Normal(m, jax.nn.softplus(s)).to_event(1))
    l = numpyro.param("l", jnp.zeros((y.shape[0], 2)))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("z", nd.Categorical(logits=l), infer={"enumerate": "parallel"})


def np_guide_locs_only(y):
    m = numpyro.param("m", jnp.zeros(2))
    s = numpyro.param("s", jnp.zeros(2))
    numpyro.sample("locs", nd.Normal(m, jax.nn.softplus(s)).to_event(1))


def numpyro_step(model, guide, y, params):
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    params = {k: v for k, v in params.items() if k != "l" or guide is np_guide}

    @jax.jit
    def step(key, p):
        return jax.value_and_grad(lambda pp: elbo.loss(key, pp, model, guide, y))(p)

    return step, params


def median_time(f, args, reps):
    out = f(*args)
    jax.block_until_ready(out)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.reps, a.rounds = 50, 20, 2
    y, p = data(a.n), init(a.n)
    key = jax.random.key(0)

    E = expectation(neg_elbo, estimators={"z": Enum()})
    print(E.plan(y, p))
    ppl_grad = jax.jit(lambda k, pp: E.value_and_grad(k, y, pp, argnums=1))
    ppl_eval = jax.jit(lambda k, pp: E.estimate(k, y, pp))
    fixed = {"locs": p["m"], "z": (y > 0).astype(jnp.int32)}
    ppl_integrand = jax.jit(lambda k, pp, c: integrand(y, pp, c))
    np_guide_step, np_p = numpyro_step(np_model, np_guide, y, p)
    np_model_step, np_pm = numpyro_step(np_model, np_guide_locs_only, y, p)
    try:
        jax.jit(lambda k: expectation(neg_elbo, estimators={"z": Enum(plates=False)})
                .value_and_grad(k, y, p, argnums=1))(key)
        joint = "ran"
    except EstimatorError as e:
        joint = f"refused: {str(e)[:90]}..."

    # the same objective: check that the two libraries' values agree in expectation (locs random)
    keys = jax.random.split(jax.random.key(1), 400)
    v_ppl = float(np.mean([ppl_grad(k, p)[0] for k in keys[:100]]))
    v_np = float(np.mean([np_guide_step(k, np_p)[0] for k in keys[:100]]))

    rows = {"ppl Enum per element (guide z)": (ppl_grad, (key, p)),
            "NumPyro TraceEnum_ELBO (guide z enumerated)": (np_guide_step, (key, np_p)),
            "NumPyro TraceEnum_ELBO (model z marginalized)": (np_model_step, (key, np_pm)),
            "ppl one evaluation (E.estimate)": (ppl_eval, (key, p)),
            "ppl one evaluation at fixed choices": (ppl_integrand, (key, p, fixed))}
    times = {name: [] for name in rows}
    for _ in range(a.rounds):
        for name, (f, args) in rows.items():
            times[name].append(median_time(f, args, a.reps))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    best = {name: min(ts) for name, ts in times.items()}
    base, base_best = med["ppl Enum per element (guide z)"], best["ppl Enum per element (guide z)"]
    load = os.getloadavg()[0]
    print(f"\nN = {a.n}, K = 2; per round the median of {a.reps} calls; over {a.rounds} rounds their median "
          f"and their minimum (the least disturbed by other jobs); load average {load:.2f} on "
          f"{os.cpu_count()} CPUs; jax {jax.__version__}, numpyro {numpyro.__version__}")
    print(f"{'':48s} {'median us':>10s} {'/ ppl':>7s} {'min us':>10s} {'/ ppl':>7s}")
    for name in med:
        print(f"{name:48s} {med[name] * 1e6:10.1f} {med[name] / base:7.2f} {best[name] * 1e6:10.1f} "
              f"{best[name] / base_best:7.2f}")
    for what, m in (("median", med), ("min", best)):
        b = m["ppl Enum per element (guide z)"]
        print(f"ppl gradient / one evaluation ({what}): {b / m['ppl one evaluation (E.estimate)']:.2f} against one "
              f"sampled evaluation of the objective, {b / m['ppl one evaluation at fixed choices']:.2f} against "
              "one evaluation of its integrand at fixed choices (value and gradient, Enum per element)")
    print(f"negative ELBO, mean of 100 draws: ppl {v_ppl:.3f}, NumPyro (guide enumerated) {v_np:.3f}")
    print(f"joint enumeration, Enum(plates=False) at N = {a.n}: {joint}")


if __name__ == "__main__":
    main()
