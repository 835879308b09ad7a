"""One of two processes of a ``jax.distributed`` run of EF21-W on localhost.

usage: python _two_process_ef21_worker.py PORT PROCESS_ID OUT.json

Each process has 4 simulated CPU devices (the parent sets ``XLA_FLAGS``); the gloo CPU
collectives join them into one mesh of 8 devices, one client per device, over the loopback
interface. Both processes pass the same full client data; each writes OUT.json.PID with the
final parameters and the bytes counted.
"""
import json
import sys

import jax

port, pid, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_enable_x64", True)
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=120)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ppl.backends.distributed import ef21_stepsize, ef21_w, top_k  # noqa: E402
from ppl.models.federated import heterogeneous_logistic, logistic_loss  # noqa: E402

ROUNDS = 40


def problem():
    data, Li, L, x0 = heterogeneous_logistic(n=8, m=12, d=10)
    return data, Li, ef21_stepsize(Li, 3 / 10, L=L), x0


def run(mesh):
    data, Li, gamma, x0 = problem()
    m = ef21_w(logistic_loss(0.1), top_k(3), gamma, smoothness=Li, mesh=mesh, batch_size=5, participation=0.5)
    st, info = m.run(jax.random.key(1), m.init(jax.random.key(0), jnp.asarray(x0), data), data, ROUNDS)
    return st, info


def main():
    st, info = run(jax.make_mesh((8,), ("clients",)))
    report = {"process": jax.process_index(), "processes": jax.process_count(), "devices": len(jax.devices()),
              "local_devices": len(jax.local_devices()),
              # replicated outputs: each process holds the whole value on its devices
              "params": np.asarray(st.params.addressable_data(0)).tolist(),
              "bytes": np.asarray(info.bytes_sent.addressable_data(0)).tolist(),
              "params_sharding": str(st.params.sharding.spec), "g_clients_sharding": str(st.g_clients.sharding.spec)}
    with open(f"{out}.{pid}", "w") as f:
        json.dump(report, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
