"""First-call time of an objective with implicit differentiation, vmapped over keys, with the
linear solve's convergence check: JAX's own debug.callback batching ("before": one callback per
batch element in the staged program) against ppl's batch-invariant check ("after": one callback
per vmap level, ``_linear_solve.batch_callback``) and ``check=False``, in one run.

The objective: z ~ Normal(theta, 1) (reparameterized), x*(z, theta) the root of
(A + softplus(theta) I) x = z c found by a solver that is never differentiated, value
sum(x*)^2; ``jax.jit(jax.vmap(E.grad over keys))``, first call (trace + compile + run).

    python bench/bench_implicit_check.py                       # 8 / 200 / 4000 keys (~10 min on 2 busy cores)
    python bench/bench_implicit_check.py --sizes 8 200 --before-max 200
    python bench/bench_implicit_check.py --count               # callbacks in the staged program
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpyro.distributions as nd

import ppl
from ppl.transforms import _linear_solve, expectation, implicit

A = jnp.array([[3.0, 0.5, 0.2], [0.5, 2.0, 0.1], [0.2, 0.1, 1.5]])
C = jnp.array([1.0, -1.0, 0.5])


def F(x, w, lam):
    return (A + lam * jnp.eye(3)) @ x - w


def batched_grad(check: bool):
    root = implicit.custom_root(F, solve=implicit.CG(tol=1e-6, maxiter=50, check=check))(
        lambda x0, w, lam: jnp.linalg.solve(A + lam * jnp.eye(3), w))

    def obj(theta):
        z = ppl.sample("z", nd.Normal(theta, 1.0))
        return jnp.sum(root(jnp.zeros(3), z * C, jax.nn.softplus(theta))) ** 2

    E = expectation(obj)
    return jax.jit(jax.vmap(lambda k, t: E.grad(k, t), in_axes=(0, None)))


def staged_callbacks(n: int) -> int:
    """How many debug_callback equations the staged program holds (no compilation)."""
    def count(jaxpr):
        c = 0
        for eqn in jaxpr.eqns:
            c += eqn.primitive.name == "debug_callback"
            c += sum(count(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params))
        return c

    keys = jax.random.split(jax.random.key(0), n)
    return count(jax.make_jaxpr(batched_grad(True))(keys, 0.3).jaxpr)


def first_call(check: bool, n: int) -> float:
    f = batched_grad(check)
    keys = jax.random.split(jax.random.key(0), n)
    t0 = time.perf_counter()
    jax.block_until_ready(f(keys, 0.3))
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 200, 4000])
    ap.add_argument("--before-max", type=int, default=4000,
                    help="skip the per-element ('before') rule above this batch (it grows linearly)")
    ap.add_argument("--count", action="store_true",
                    help="only count the check callbacks in the staged program, before and after")
    a = ap.parse_args()
    ours = _linear_solve.batch_callback

    def per_element(fn, *args):  # what the check did before: JAX's unrolling batching rule
        jax.debug.callback(fn, *args)

    if a.count:
        for n in a.sizes:
            _linear_solve.batch_callback = per_element
            try:
                before = staged_callbacks(n)
            finally:
                _linear_solve.batch_callback = ours
            print(f"{n:>6} keys: {before} check callbacks staged before, {staged_callbacks(n)} after")
        return

    print(f"{'keys':>6} {'before (s)':>11} {'after (s)':>10} {'check=False (s)':>16} {'before/after':>13}")
    for n in a.sizes:
        before = float("nan")
        if n <= a.before_max:
            _linear_solve.batch_callback = per_element
            try:
                before = first_call(True, n)
            finally:
                _linear_solve.batch_callback = ours
        after = first_call(True, n)
        off = first_call(False, n)
        print(f"{n:>6} {before:>11.2f} {after:>10.2f} {off:>16.2f} {before / after:>13.1f}", flush=True)


if __name__ == "__main__":
    main()
