"""``fit(..., mesh=...)`` on 8 simulated CPU devices, in its own process (the device count is
fixed when JAX starts; the parent sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8``).

usage: python _sharded_fit_worker.py TMPDIR   (prints one JSON object; test_sharded_fit.py checks it)

The problem: Bayesian linear regression (3 weights, 64 examples, minibatches of 16), a Gaussian
guide fitted by the ELBO with ADEV gradients and plain SGD. Runs the same fit on one device and
on meshes of 8, 2 and 4x2 devices; checkpoints on 8 devices and resumes on 1, and back; checks
that only process 0 writes a checkpoint; collects the error messages for bad input.

Parameters sharded along a second mesh axis (``param_sharding=``) are checked on a location
model with matrix parameters (``param_sharded``), with the same tolerance derivation.

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
import functools
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
from jax.sharding import PartitionSpec as P  # noqa: E402

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


def run(num_steps=T, loss=loss, params=PARAMS, d=None, optimizer=None, **kw):
    r = fit(loss, optimizer or optax.sgd(LR), params, key=KEY, num_steps=num_steps,
            data=data() if d is None else d, batch_size=B, chunk=CHUNK, progress=False, **kw)
    return jax.tree.map(np.asarray, r.params), r


def flat(p):
    return np.concatenate([np.ravel(p["loc"]), np.ravel(p["s"])])


# Parameters sharded along a second mesh axis (fit(param_sharding=...)): a location model whose
# parameters are matrices, y_i ~ Normal(w, SIGMA) with w of shape LOC_SHAPE, so the gradient of
# each parameter is again a sum of B per-example terms (the same tolerance derivation applies).
LOC_SHAPE = (4, 6)
LOC_PARAMS = {"loc": jnp.zeros(LOC_SHAPE), "s": jnp.full(LOC_SHAPE, -1.0)}
PARAM_SPECS = []


def loc_model(y):
    w = ppl.sample("w", nd.Normal(jnp.zeros(LOC_SHAPE), 1.0).to_event(2))
    ppl.sample("y", nd.Normal(jnp.broadcast_to(w, y.shape), SIGMA).to_event(3), obs=y)


E_LOC = expectation(O.elbo(loc_model, guide))


def loc_loss(k, p, b):
    TRACES["n"] += 1
    jax.debug.inspect_array_sharding(p["loc"], callback=lambda s: PARAM_SPECS.append(str(getattr(s, "spec", s))))
    return -E_LOC.estimate(k, (b["y"],), (p,))


def loc_data():
    w = jnp.arange(24.0).reshape(LOC_SHAPE) / 12 - 1
    return {"y": w + SIGMA * jax.random.normal(jax.random.key(5), (N,) + LOC_SHAPE)}


def param_sharded(tmp, mesh42, mesh24):
    """fit(param_sharding=...) against the one-device run; the checkpoint resumed on other meshes."""
    d = loc_data()
    go = functools.partial(run, loss=loc_loss, params=LOC_PARAMS, d=d)
    ref, _ = go()
    out = {"ref_params": flat(ref).tolist()}
    out |= tolerance([LOC_PARAMS, ref], loss=loc_loss, params0=LOC_PARAMS, d=d)
    dropped = lambda k, p, b: loc_loss(k, p, jax.tree.map(lambda a: a[: B - B // 8], b))
    out["negative_control"] = maxdiff(go(loss=dropped)[0], ref)  # one device's share of each minibatch lost
    TRACES["n"] = 0
    PARAM_SPECS.clear()
    p42, r42 = go(mesh=mesh42, data_axis="data", param_sharding="model")
    out["traces_three_chunks"] = TRACES["n"]
    out["specs_in_loss"] = sorted(set(PARAM_SPECS))
    out["result_specs"] = {"4x2 'model'": str(r42.params["loc"].sharding.spec)}
    p24, r24 = go(mesh=mesh24, data_axis="data", param_sharding="model")
    out["result_specs"]["2x4 'model'"] = str(r24.params["loc"].sharding.spec)
    # the data axis itself (ZeRO/FSDP-style), and explicit specs as a pytree and as a function
    pz, rz = go(mesh=mesh42, data_axis="data", param_sharding="data")
    out["result_specs"]["4x2 'data'"] = str(rz.params["loc"].sharding.spec)
    explicit = {"loc": P("data", "model"), "s": P()}
    pe, re_ = go(mesh=mesh42, data_axis="data", param_sharding=explicit)
    pf, rf = go(mesh=mesh42, data_axis="data", param_sharding=lambda path, leaf: P(None, "model"))
    out["result_specs"]["explicit"] = [str(re_.params["loc"].sharding.spec), str(re_.params["s"].sharding.spec)]
    out["result_specs"]["function"] = str(rf.params["s"].sharding.spec)
    out["diff"] = {"4x2 'model'": maxdiff(p42, ref), "2x4 'model'": maxdiff(p24, ref), "4x2 'data'": maxdiff(pz, ref),
                   "explicit": maxdiff(pe, ref), "function": maxdiff(pf, ref)}
    # Adam: its moments take the parameters' sharding, its step count stays replicated
    _, ra = go(CHUNK, mesh=mesh42, data_axis="data", param_sharding="model", optimizer=optax.adam(1e-2))
    adam = ra.state.opt_state[0]
    out["adam_specs"] = [str(adam.mu["loc"].sharding.spec), str(adam.nu["s"].sharding.spec),
                         str(adam.count.sharding.spec)]
    # checkpoint written once on 4x2 with the parameters sharded; resumed on one device and on 2x4
    ck = os.path.join(tmp, "param_sharded.npz")
    half, _ = go(20, mesh=mesh42, data_axis="data", param_sharding="model", checkpoint=ck)
    back, _ = go(20, checkpoint=ck, resume=True)
    out["restored_exact"] = bool(np.array_equal(flat(back), flat(half)))
    r1 = go(checkpoint=ck, resume=True)[1]
    r24b = go(checkpoint=ck, resume=True, mesh=mesh24, data_axis="data", param_sharding="model")[1]
    out["resumed_steps"] = [int(r1.state.step), int(r24b.state.step)]
    out["resumed_diff"] = {"to 1 device": maxdiff(jax.tree.map(np.asarray, r1.params), ref),
                           "to 2x4": maxdiff(jax.tree.map(np.asarray, r24b.params), ref)}
    # without data: the mesh needs no data axis
    nd_ = fit(lambda k, p, b: jnp.sum((p["loc"] - 1.0) ** 2), optax.sgd(0.1), LOC_PARAMS, key=KEY, num_steps=5,
              progress=False, mesh=mesh42, param_sharding="model")
    out["no_data"] = [str(nd_.params["loc"].sharding.spec), float(np.max(np.abs(np.asarray(nd_.params["loc"]) - (1 - 0.8 ** 5))))]

    def refuse(param_sharding, mesh=mesh42):
        try:
            go(2, mesh=mesh, data_axis="data" if mesh is not None else None, param_sharding=param_sharding)
        except (ValueError, TypeError) as e:
            return f"{type(e).__name__}: {e}"
        return None

    out["errors"] = {"no_axis": refuse("tensor"), "spec_axis": refuse({"loc": P("tensor"), "s": P()}),
                     "indivisible": refuse({"loc": P(None, "data"), "s": P()}),
                     "too_long": refuse({"loc": P(None, None, "model"), "s": P()}),
                     "structure": refuse({"loc": P()}), "not_a_spec": refuse({"loc": "model", "s": P()}),
                     "no_mesh": refuse("model", mesh=None)}
    return out


def tolerance(params_path, steps=(0, 9, 19, 29), loss=loss, params0=PARAMS, d=None):
    """T lr (B - 1) eps S G (the module docstring), with S and the curvature measured on the
    minibatches and keys of ``steps`` at each parameter vector of ``params_path`` (for ``loss``
    on data ``d``, default: the regression)."""
    eps = float(np.finfo(np.float32).eps)
    d = data() if d is None else d
    step_key, data_key = jax.random.split(KEY)
    _, unflat = jax.flatten_util.ravel_pytree(params0)

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

    out["param_sharded"] = param_sharded(tmp, mesh42, jax.make_mesh((2, 4), ("data", "model")))

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
