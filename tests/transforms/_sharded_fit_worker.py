"""``fit(..., mesh=...)`` on 8 simulated CPU devices, in its own process (the device count is
fixed when JAX starts; the parent sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8``).

usage: python _sharded_fit_worker.py TMPDIR   (prints one JSON object; test_sharded_fit.py checks it)

The problem: Bayesian linear regression (3 weights, 64 examples, minibatches of 16), a Gaussian
guide fitted by the ELBO with ADEV gradients and plain SGD. Runs the same fit on one device and
on meshes of 8, 2 and 4x2 devices; checkpoints on 8 devices and resumes on 1, and back; checks
that only process 0 writes a checkpoint; collects the error messages for bad input.

Tolerance (float reduction order). A minibatch gradient is a sum of B per-example terms; the
sharded run adds them in another order (per-device partial sums, then an all-reduce). For a
sum of B terms any order is within (B - 1) eps sum_i |g_i| of the exact sum (eps: float32's
machine epsilon), so each SGD step moves the parameters by at most lr (B - 1) eps S more or less,
S an upper bound on sum_i |g_i|. An SGD step's update map u -> u - lr grad(u) has Lipschitz
constant max |1 - lr lambda| over the loss Hessian's eigenvalues lambda, at most 1 + lr max(0,
-lambda_min) when lr lambda_max <= 2 (checked), so T steps add up to at most
T lr (B - 1) eps S G with G = (1 + lr max(0, -lambda_min))^T. ``S`` is measured (the per-example gradients'
absolute sum, each computed on a one-example batch with the step's key, so prior and entropy
terms are counted B times: an over-estimate) at the start and the end of the one-device run,
doubled for the path between, on the minibatches and keys of four of the steps; lambda_min and
lambda_max are the extreme eigenvalues of the loss's Hessian measured the same way (lambda_min
doubled for the path). A negative control (the minibatch missing one device's share) must
differ by more than the tolerance.
"""
import json
import os
import sys

import jax
import jax.flatten_util

from ppl.config import use_compilation_cache

use_compilation_cache()

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as nd  # noqa: E402
import optax  # noqa: E402

import ppl  # noqa: E402
from ppl.transforms import expectation  # noqa: E402
from ppl.transforms import fit as fit_module  # noqa: E402
from ppl.transforms import objectives as O  # noqa: E402
from ppl.transforms.fit import fit  # noqa: E402

N, D, B, T, CHUNK, LR, SIGMA = 64, 3, 16, 30, 10, 2e-3, 0.5
TRACES = {"n": 0}


def model(x, y):
    w = ppl.sample("w", nd.Normal(jnp.zeros(D), 1.0).to_event(1))
    ppl.sample("y", nd.Normal(x @ w, SIGMA).to_event(1), obs=y)


def guide(phi):
    ppl.sample("w", nd.Normal(phi["loc"], jax.nn.softplus(phi["s"])).to_event(1))


E = expectation(O.elbo(model, guide))
SHARDINGS = []


def loss(k, p, b):
    TRACES["n"] += 1
    jax.debug.inspect_array_sharding(b["x"], callback=lambda s: SHARDINGS.append(str(getattr(s, "spec", s))))
    return -E.estimate(k, (b["x"], b["y"]), (p,))


def dropped_share_loss(k, p, b):  # the negative control: one device's share of each minibatch lost
    keep = jax.tree.map(lambda a: a[: B - B // 8], b)
    return -E.estimate(k, (keep["x"], keep["y"]), (p,))


def data():
    kx, ky = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (N, D))
    y = x @ jnp.array([0.7, -1.3, 0.4]) + SIGMA * jax.random.normal(ky, (N,))
    return {"x": x, "y": y}


PARAMS = {"loc": jnp.array([0.1, 0.2, -0.3]), "s": jnp.full((D,), -1.0)}
KEY = jax.random.key(11)


def run(num_steps=T, loss=loss, **kw):
    r = fit(loss, optax.sgd(LR), PARAMS, key=KEY, num_steps=num_steps, data=data(), batch_size=B, chunk=CHUNK,
            progress=False, **kw)
    return jax.tree.map(np.asarray, r.params), r


def flat(p):
    return np.concatenate([np.ravel(p["loc"]), np.ravel(p["s"])])


def tolerance(params_path, steps=(0, 9, 19, 29)):
    """T lr (B - 1) eps S G (the module docstring), with S and the curvature measured on the
    minibatches and keys of ``steps`` at each parameter vector of ``params_path``."""
    eps = float(np.finfo(np.float32).eps)
    d = data()
    step_key, data_key = jax.random.split(KEY)
    _, unflat = jax.flatten_util.ravel_pytree(PARAMS)

    @jax.jit
    def measure(k, v, batch):  # per-example gradients' absolute sum; the loss's Hessian
        one = lambda ex: jax.grad(lambda u: loss(k, unflat(u), jax.tree.map(lambda a: a[None], ex)))(v)
        return jnp.max(jnp.sum(jnp.abs(jax.vmap(one)(batch)), axis=0)), jax.hessian(
            lambda u: loss(k, unflat(u), batch))(v)

    sums, lo, hi = [], [], []
    for p in params_path:
        for t in steps:
            s, h = measure(jax.random.fold_in(step_key, t), jax.flatten_util.ravel_pytree(p)[0],
                           fit_module._minibatch(d, B, data_key, t))
            ev = np.linalg.eigvalsh(np.asarray(h, np.float64))
            sums.append(float(s)), lo.append(ev[0]), hi.append(ev[-1])
    S = 2 * max(sums)
    G = (1 + LR * max(0.0, -2 * min(lo))) ** T
    return {"tol": T * LR * (B - 1) * eps * S * G, "S": S, "growth": G, "lr_times_max_curvature": LR * max(hi)}


def maxdiff(a, b):
    return float(np.max(np.abs(flat(a) - flat(b))))


def maxdiff_flat(a, b):
    return float(np.max(np.abs(a - b)))


def error(**kw):
    try:
        fit(loss, optax.sgd(LR), PARAMS, key=KEY, num_steps=2, progress=False, **kw)
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def main():
    tmp = sys.argv[1]
    devs = jax.devices()
    mesh8 = jax.make_mesh((8,), ("data",))
    mesh2 = jax.make_mesh((2,), ("data",), devices=devs[:2])
    mesh42 = jax.make_mesh((4, 2), ("data", "model"))
    out = {"devices": len(devs)}

    ref, r = run()
    out["ref_params"], out["ref_history"] = flat(ref).tolist(), np.asarray(r.history).tolist()
    out.update(tolerance([PARAMS, ref]))
    TRACES["n"] = 0
    SHARDINGS.clear()
    run(CHUNK, mesh=mesh8)
    out["traces_mesh8_one_chunk"] = TRACES["n"]
    TRACES["n"] = 0
    p8, r8 = run(mesh=mesh8)
    out["traces_mesh8_three_chunks"] = TRACES["n"]
    out["batch_specs_mesh8"] = sorted(set(SHARDINGS))
    out["param_sharding_mesh8"] = str(r8.params["loc"].sharding.spec)
    out["param_devices_mesh8"] = len(r8.params["loc"].sharding.device_set)
    out["diff"] = {"mesh8": maxdiff(p8, ref), "mesh2": maxdiff(run(mesh=mesh2)[0], ref),
                   "mesh4x2": maxdiff(run(mesh=mesh42, data_axis="data")[0], ref)}
    out["negative_control"] = maxdiff(run(loss=dropped_share_loss)[0], ref)

    # resume across device counts: 8 -> 1 and 1 -> 8
    c8, c1 = os.path.join(tmp, "eight.npz"), os.path.join(tmp, "one.npz")
    half8, _ = run(20, mesh=mesh8, checkpoint=c8)
    half1, _ = run(20, checkpoint=c1)
    out["restored_exact"] = {
        "8to1": bool(np.array_equal(flat(run(20, checkpoint=c8, resume=True)[0]), flat(half8))),
        "1to8": bool(np.array_equal(flat(run(20, checkpoint=c1, resume=True, mesh=mesh8)[0]), flat(half1)))}
    r81 = run(checkpoint=c8, resume=True)[1]
    r18 = run(checkpoint=c1, resume=True, mesh=mesh8)[1]
    out["resumed_steps"] = [int(r81.state.step), int(r18.state.step), len(r81.history), len(r18.history)]
    out["resumed_diff"] = {"8to1": maxdiff(jax.tree.map(np.asarray, r81.params), ref),
                           "1to8": maxdiff(jax.tree.map(np.asarray, r18.params), ref)}

    # only process 0 writes checkpoints
    other = os.path.join(tmp, "process1.npz")
    real = jax.process_index
    jax.process_index = lambda *a, **k: 1
    try:
        run(CHUNK, mesh=mesh8, checkpoint=other)
    finally:
        jax.process_index = real
    out["process1_wrote"] = os.path.exists(other)

    # a NaN example: the same step fails with and without the mesh, the last good state is kept
    bad = data()
    bad["y"] = bad["y"].at[37].set(jnp.nan)
    stops = []
    for mesh in (None, mesh8):
        try:
            fit(loss, optax.sgd(LR), PARAMS, key=KEY, num_steps=T, data=bad, batch_size=B, chunk=CHUNK,
                progress=False, mesh=mesh)
            stops.append(None)
        except fit_module.NonFiniteError as e:
            stops.append((str(e).split(" (loss")[0], flat(jax.tree.map(np.asarray, e.state.params)),
                          int(e.state.step)))
    out["nonfinite"] = {"messages": [s_[0] for s_ in stops if s_], "steps": [s_[2] for s_ in stops if s_],
                        "state_diff": maxdiff_flat(stops[0][1], stops[1][1]) if None not in stops else None}

    d = data()
    out["errors"] = {
        "axis": error(data=d, batch_size=B, mesh=mesh8, data_axis="batch"),
        "examples": error(data=jax.tree.map(lambda a: a[:60], d), batch_size=B, mesh=mesh8),
        "batch": error(data=d, batch_size=12, mesh=mesh8),
        "two_axes": error(data=d, batch_size=B, mesh=mesh42),
        "axis_without_mesh": error(data=d, batch_size=B, data_axis="data"),
        "no_data": error(mesh=mesh8),
        "not_a_mesh": error(data=d, batch_size=B, mesh=devs),
        "adaptive": error(data=d, batch_size=_Controller(), mesh=mesh8),
    }
    print(json.dumps(out))


class _Controller:  # shaped like an adaptive-batch controller; fit must refuse it with a mesh first
    initial, maximum, every = 8, 16, 1

    def buckets(self):
        return (8, 16)

    def next_batch_size(self, grads, current):
        return current


if __name__ == "__main__":
    main()
