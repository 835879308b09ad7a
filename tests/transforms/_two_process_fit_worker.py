"""One of two processes of a ``jax.distributed`` run of ``fit(..., mesh=...)`` on localhost.

usage: python _two_process_fit_worker.py PORT PROCESS_ID OUT.json CHECKPOINT

Each process has 4 simulated CPU devices (the parent sets ``XLA_FLAGS``); the gloo CPU
collectives join them into one mesh of 8 devices over the loopback interface. Both processes
run the same fit as ``_sharded_fit_worker.py`` (same data, key, optimizer) with the data split
along the 8 devices, checkpointing to CHECKPOINT; process 0 writes OUT.json with the final
parameters and which processes found the checkpoint written; then the location model of
``_sharded_fit_worker.py`` with its parameters split along a second mesh axis
(``param_sharding="model"`` on a 4x2 mesh), checkpointed to CHECKPOINT.params.npz (gathered
from both processes, written by process 0).
"""
import json
import sys

import jax

port, pid, out, ckpt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=120)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import _sharded_fit_worker as w  # noqa: E402


def main():
    mesh = jax.make_mesh((8,), ("data",))
    params, r = w.run(checkpoint=ckpt, mesh=mesh)
    # parameters split along a second axis (param_sharding): the checkpoint gathers them across processes
    mesh42 = jax.make_mesh((4, 2), ("data", "model"))
    go = lambda **kw: w.fit(w.loc_loss, w.optax.sgd(w.LR), w.LOC_PARAMS, key=w.KEY, num_steps=w.T, data=w.loc_data(),
                            batch_size=w.B, chunk=w.CHUNK, progress=False, **kw)
    rp = go(mesh=mesh42, data_axis="data", param_sharding="model", checkpoint=ckpt + ".params.npz")
    split = multihost_utils.process_allgather(rp.params, tiled=True)
    report = {"process": jax.process_index(), "processes": jax.process_count(), "devices": len(jax.devices()),
              "local_devices": len(jax.local_devices()), "params": w.flat(params).tolist(),
              "history": np.asarray(r.history).tolist(),
              "param_sharded": w.flat(jax.tree.map(np.asarray, split)).tolist(),
              "param_sharded_spec": str(rp.params["loc"].sharding.spec)}
    with open(f"{out}.{pid}", "w") as f:
        json.dump(report, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
