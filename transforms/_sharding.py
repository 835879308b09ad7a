"""Data-parallel placement for ``fit(..., mesh=...)`` on JAX's own sharding.

A :class:`jax.sharding.Mesh` and the name of one of its axes give two shardings:

- ``replicated = NamedSharding(mesh, P())`` for the parameters, the optimizer state, the step
  counter and the losses (every device holds a copy);
- ``examples = NamedSharding(mesh, P(data_axis))`` for the data and each step's minibatch: the
  leading (example) axis split in ``mesh.shape[data_axis]`` equal blocks along that axis
  (replicated along the mesh's other axes).

The chunk is compiled once by ``jax.jit`` with these shardings; XLA's partitioner (GSPMD) turns
the sum over the minibatch inside the loss and its gradient into per-device partial sums and an
all-reduce, so the gradient equals the one-device gradient up to the order of the float
additions. Random draws do not depend on the placement (JAX's partitionable Threefry, on by
default). Shardings are propagated by the partitioner: ``fit`` uses the mesh's devices and axis
names with ``AxisType.Auto`` axes whatever the mesh's own axis types (``jax.make_mesh`` makes
``Explicit`` ones), so a loss written for one device runs unchanged.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


class Placement(NamedTuple):
    mesh: Mesh            # the user's devices and axis names, Auto axes
    data_axis: str
    replicated: NamedSharding
    examples: NamedSharding

    @property
    def axis_size(self):
        return self.mesh.shape[self.data_axis]


def placement(mesh, data_axis, data, batch_size) -> Placement:
    """Check ``mesh``, ``data_axis``, ``data`` and ``batch_size`` together; the shardings."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"fit(mesh=...): expected a jax.sharding.Mesh (e.g. jax.make_mesh((8,), ('data',))), "
                        f"got {type(mesh).__name__}")
    names = tuple(mesh.axis_names)
    if data_axis is None:
        if len(names) != 1:
            raise ValueError(f"fit(mesh=...): the mesh has axes {names}; say which one splits the minibatch "
                             "with data_axis=")
        data_axis = names[0]
    if data_axis not in names:
        raise ValueError(f"fit(data_axis={data_axis!r}): the mesh has no axis of that name; its axes are {names}")
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError("fit(mesh=...) splits the examples of data= over the mesh; without data there is "
                         "nothing to split (run without mesh=)")
    size = mesh.shape[data_axis]
    n = np.shape(leaves[0])[0]
    if n % size:
        raise ValueError(f"fit(mesh=...): the number of examples ({n}) is not divisible by the size of mesh axis "
                         f"{data_axis!r} ({size}); the data is placed in equal blocks along it. Drop "
                         f"{n % size} examples or use another number of devices")
    b = n if batch_size is None else int(batch_size)
    if b % size:
        raise ValueError(f"fit(batch_size={b}): not divisible by the size of mesh axis {data_axis!r} ({size}); "
                         "each device takes an equal share of every minibatch. Use a multiple of "
                         f"{size}")
    auto = Mesh(mesh.devices, names, axis_types=(AxisType.Auto,) * len(names))
    return Placement(auto, data_axis, NamedSharding(auto, P()), NamedSharding(auto, P(data_axis)))


def place_data(data, where: Placement):
    """``data`` with its leading axis split along the data axis (one transfer per device)."""
    return jax.device_put(data, where.examples)


def constrain_batch(batch, where: Placement):
    """Inside the compiled chunk: the minibatch split along the data axis like the data."""
    return jax.lax.with_sharding_constraint(batch, where.examples)
