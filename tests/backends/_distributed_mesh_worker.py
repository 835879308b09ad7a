"""The distributed methods (EF21 / EF21-W, DIFF2, FedAMD / FedAvg) on 8 simulated CPU devices, in their own process (the parent sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; the device count is fixed when JAX
starts). Prints one JSON object; test_distributed_mesh.py checks it.

Each method runs on a mesh of 8 devices (one client per device, and 16 clients: two stacked per
device), on a 2x4 mesh along its second axis, and on one device; per-client keys are folded
from the global client index, so the runs agree up to the order of float additions in the
collectives (float64 here: differences near 1e-15 relative).
"""
import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ppl.backends.distributed import diff2, ef21, ef21_stepsize, ef21_w, fedamd, fedavg, stack_clients, top_k  # noqa: E402,E501
from ppl.models.federated import diabetes_clients, squared_loss  # noqa: E402
from test_distributed_ef21 import logistic_problem, loss  # noqa: E402


def diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def ef21_runs(out):
    mesh8 = jax.make_mesh((8,), ("clients",))
    mesh24 = jax.make_mesh((2, 4), ("model", "clients"))
    res = {}
    for n, name, kw, meshes in ((8, "gd", {}, (("mesh8", mesh8), ("mesh2x4", mesh24))),
                                (16, "sgd_pp", {"batch_size": 5, "participation": 0.5}, (("mesh8", mesh8),))):
        data, Li, Lf, x0 = logistic_problem(n=n, m=12, d=10)
        gamma = ef21_stepsize(Li, 3 / 10, L=Lf)
        runs = {}
        for mname, mesh in (("one", None),) + meshes:
            m = ef21_w(loss, top_k(3), gamma, smoothness=Li, mesh=mesh, **kw)
            st, info = m.run(jax.random.key(1), m.init(jax.random.key(0), jnp.asarray(x0), data), data, 40)
            runs[mname] = (st, info)
        one = runs["one"]
        res[f"{name}_n{n}"] = {
            "diff": {k: diff(one[0], runs[k][0]) for k, _ in meshes},
            "bytes_equal": bool(np.array_equal(one[1].bytes_sent, runs["mesh8"][1].bytes_sent)),
            "bytes_first": int(one[1].bytes_sent[0]),
            "participants": np.asarray(one[1].participants).tolist(),
            "g_clients_sharding": str(runs["mesh8"][0].g_clients.sharding.spec),
            "loss_drop": float(one[1].loss[-1] - one[1].loss[0]),
        }
    # plain EF21 on the mesh equals EF21-W on the mesh (Top-K)
    data, Li, Lf, x0 = logistic_problem(n=8, m=12, d=10)
    a = ef21(loss, top_k(3), 0.01, mesh=mesh8)
    b = ef21_w(loss, top_k(3), 0.01, smoothness=Li, mesh=mesh8)
    sa, _ = a.run(jax.random.key(1), a.init(jax.random.key(0), jnp.asarray(x0), data), data, 40)
    sb, _ = b.run(jax.random.key(1), b.init(jax.random.key(0), jnp.asarray(x0), data), data, 40)
    res["ef21_vs_w_mesh8"] = diff(sa.params, sb.params)
    try:
        d6 = {k: v[:6] for k, v in data.items()}
        a.init(jax.random.key(0), jnp.asarray(x0), d6)
        res["error_uneven"] = None
    except ValueError as e:
        res["error_uneven"] = str(e)
    out["ef21"] = res


def diff2_runs(out):
    """DIFF2 with noise, 16 clients (two per device) on 8 devices against one device."""
    data = diabetes_clients(16)
    res = {}
    for mname, mesh in (("one", None), ("mesh8", jax.make_mesh((8,), ("clients",)))):
        m = diff2(squared_loss, stepsize=0.05, noise_multiplier=2.0, diff_noise_multiplier=5.0, clip=2.0,
                  clip_diff=4.0, period=4, mesh=mesh)
        res[mname] = m.run(jax.random.key(3), m.init(None, jnp.zeros(11), data), data, 12)
    out["diff2"] = {"diff": diff(res["one"][0], res["mesh8"][0]),
                    "restarts": np.asarray(res["mesh8"][1].restart).tolist(),
                    "loss_drop": float(res["one"][1].loss[-1] - res["one"][1].loss[0])}


def fed_runs(out):
    """FedAMD and FedAvg, 20 clients of different sizes on a mesh of 4 devices (5 each)."""
    rng = np.random.default_rng(0)
    parts = [{"c": rng.normal(size=(int(k), 3)), "a": rng.uniform(0.5, 2, size=(int(k),))}
             for k in rng.integers(1, 9, size=20)]
    data, counts = stack_clients(parts)

    def qloss(key, x, b):
        return jnp.mean(0.5 * b["a"] * jnp.sum((x - b["c"]) ** 2, -1))

    res = {}
    for name, make in (("fedamd", lambda mesh: fedamd(qloss, local_steps=3, local_lr=0.1, batch_size=4, mesh=mesh)),
                       ("fedavg", lambda mesh: fedavg(qloss, local_steps=3, local_lr=0.1, batch_size=4, mesh=mesh))):
        runs = {}
        for mname, mesh in (("one", None), ("mesh4", jax.make_mesh((4,), ("clients",), devices=jax.devices()[:4]))):
            m = make(mesh)
            runs[mname] = m.run(jax.random.key(1), m.init(jax.random.key(0), jnp.zeros(3), data, counts), data,
                                counts, 10)
        res[name] = {"diff": diff(runs["one"][0].params, runs["mesh4"][0].params),
                     "same_participants": bool(np.array_equal(runs["one"][1].participants,
                                                              runs["mesh4"][1].participants)),
                     "same_anchors": bool(np.array_equal(runs["one"][1].anchors, runs["mesh4"][1].anchors))}
    out["fed"] = res


def main():
    out = {"devices": jax.device_count()}
    ef21_runs(out)
    diff2_runs(out)
    fed_runs(out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
