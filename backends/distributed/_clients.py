"""Clients on a mesh axis: placement, per-client keys, minibatches, one ``shard_map`` helper.

``n`` clients are stacked along a leading axis (every leaf of the client data and of the
per-client state has shape ``(n, ...)``) and split in equal blocks along the mesh axis; inside
each shard the ``n / devices`` local clients are ``vmap``-ped. Client ``i`` (global index) gets
the key ``fold_in(round_key, i)`` wherever it runs, so results do not depend on the number of
devices (up to the order of float additions in collectives).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P


def client_mesh(mesh, axis, n_clients, who):
    """The mesh to run on (one device when ``mesh`` is None), checked against ``n_clients``."""
    if mesh is None:
        mesh = Mesh(np.array(jax.devices()[:1]), (axis,))
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{who}(mesh=...): expected a jax.sharding.Mesh (e.g. jax.make_mesh((8,), ('clients',))), "
                        f"got {type(mesh).__name__}")
    if axis not in mesh.axis_names:
        raise ValueError(f"{who}(axis={axis!r}): the mesh has no axis of that name; its axes are "
                         f"{tuple(mesh.axis_names)}")
    size = mesh.shape[axis]
    if n_clients % size:
        raise ValueError(f"{who}: {n_clients} clients cannot be split in equal blocks over mesh axis {axis!r} of "
                         f"size {size}; use a number of clients divisible by {size}")
    # explicit-axis meshes (jax.make_mesh's default) would make shard_map refuse unplaced inputs:
    # use the same devices and names with Auto axes, as fit(mesh=...) does
    names = tuple(mesh.axis_names)
    return Mesh(mesh.devices, names, axis_types=(AxisType.Auto,) * len(names))


def num_clients(data, who):
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError(f"{who}: client data is empty; pass a pytree whose leaves have a leading client axis")
    n = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
    if len(n) != 1 or None in n:
        raise ValueError(f"{who}: every leaf of the client data needs the same leading (client) axis; got leading "
                         f"sizes {sorted(map(str, n))}")
    return n.pop()


def client_ids(axis, n_local):
    """Global indices of this shard's clients."""
    return jax.lax.axis_index(axis) * n_local + jnp.arange(n_local)


def client_keys(key, axis, n_local):
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(client_ids(axis, n_local))


def minibatch(key, data, batch_size):
    """``batch_size`` examples of one client's data drawn without replacement (the leading axis
    of each leaf is the client's examples); all of it when ``batch_size`` is None."""
    if batch_size is None:
        return data
    m = jax.tree_util.tree_leaves(data)[0].shape[0]
    idx = jax.random.choice(key, m, (batch_size,), replace=False)
    return jax.tree.map(lambda a: a[idx], data)


def check_batch_size(batch_size, data, who):
    if batch_size is None:
        return
    m = {np.shape(a)[1] if np.ndim(a) > 1 else None for a in jax.tree_util.tree_leaves(data)}
    if len(m) != 1 or None in m:
        raise ValueError(f"{who}(batch_size=...): every leaf of the client data needs shape (clients, examples, ...) "
                         f"with one number of examples; got {sorted(map(str, m))}")
    m = m.pop()
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= m:
        raise ValueError(f"{who}(batch_size={batch_size!r}): must be an integer in [1, {m}] (each client's number of "
                         "examples); None uses all of them")


def sharded(fn, mesh, axis, in_specs, out_specs):
    """``shard_map`` with ``check_vma=False``: ADEV's interpreters (a ppl objective as the local
    loss) do not carry varying-axes types (see transforms/README.md)."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

