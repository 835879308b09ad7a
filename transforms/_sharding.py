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

``fit(..., param_sharding=...)`` also splits the parameters (and the optimizer state that
mirrors them: Adam's moments, momentum traces) along mesh axes, each leaf placed with its own
``NamedSharding`` (:func:`param_specs` says which forms are accepted); the optimizer state's
other leaves (step counts) stay replicated. XLA's partitioner inserts the all-gathers and
reduce-scatters the step needs; the update is the same computation, so results again equal the
one-device run up to the order of float additions.
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


def placement(mesh, data_axis, data, batch_size, need_data=True) -> Placement:
    """Check ``mesh``, ``data_axis``, ``data`` and ``batch_size`` together; the shardings.

    ``need_data=False`` (parameters sharded, nothing else asked of the mesh): a run without
    data is allowed, and then ``data_axis`` may stay unnamed on a mesh of several axes."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"fit(mesh=...): expected a jax.sharding.Mesh (e.g. jax.make_mesh((8,), ('data',))), "
                        f"got {type(mesh).__name__}")
    names = tuple(mesh.axis_names)
    auto = Mesh(mesh.devices, names, axis_types=(AxisType.Auto,) * len(names))
    if not need_data and not jax.tree_util.tree_leaves(data):
        if data_axis is not None and data_axis not in names:
            raise ValueError(f"fit(data_axis={data_axis!r}): the mesh has no axis of that name; its axes are {names}")
        return Placement(auto, data_axis, NamedSharding(auto, P()), NamedSharding(auto, P()))
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
    return Placement(auto, data_axis, NamedSharding(auto, P()), NamedSharding(auto, P(data_axis)))


def place_data(data, where: Placement):
    """``data`` with its leading axis split along the data axis (one transfer per device)."""
    return jax.device_put(data, where.examples)


def constrain_batch(batch, where: Placement):
    """Inside the compiled chunk: the minibatch split along the data axis like the data."""
    return jax.lax.with_sharding_constraint(batch, where.examples)


def param_specs(param_sharding, params, mesh):
    """One ``PartitionSpec`` per leaf of ``params`` (``fit(param_sharding=...)``), checked.

    ``param_sharding`` is one of:

    - a mesh axis name (``"model"``): each leaf's largest dimension divisible by that axis'
      size is split along it (the first such dimension on ties); a leaf without one (a scalar,
      a bias shorter than the axis) stays replicated;
    - a pytree of ``PartitionSpec`` with the structure of ``params`` (``P()`` or ``None``:
      replicated);
    - a function ``(path, leaf) -> PartitionSpec`` (``path``: the leaf's key path, as
      ``jax.tree_util.tree_map_with_path`` gives it).

    Every axis a spec names must exist in the mesh, a spec has at most one entry per dimension,
    and each split dimension must be divisible by the product of its axes' sizes; otherwise a
    ValueError names the parameter (its key path) and the fix.
    """
    names = tuple(mesh.axis_names)
    if isinstance(param_sharding, str):
        if param_sharding not in names:
            raise ValueError(f"fit(param_sharding={param_sharding!r}): the mesh has no axis of that name; its axes "
                             f"are {names}")
        size = mesh.shape[param_sharding]

        def largest(leaf):
            shape = np.shape(leaf)
            fits = [d for d in range(len(shape)) if shape[d] % size == 0 and shape[d] >= size]
            if not fits:
                return P()
            d = max(fits, key=lambda i: (shape[i], -i))
            return P(*([None] * d + [param_sharding]))

        specs = jax.tree_util.tree_map(largest, params)
    elif callable(param_sharding):
        specs = jax.tree_util.tree_map_with_path(param_sharding, params)
    else:
        structure = jax.tree_util.tree_structure(params)
        given = jax.tree_util.tree_structure(param_sharding, is_leaf=_is_spec)
        if given != structure:
            raise ValueError("fit(param_sharding=...): a pytree of PartitionSpecs must have the structure of "
                             f"params; params are {structure}, the specs {given}")
        specs = param_sharding
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for (path, leaf), spec in zip(flat, jax.tree_util.tree_leaves(specs, is_leaf=_is_spec)):
        out.append(_check_spec(jax.tree_util.keystr(path) or "params", np.shape(leaf), spec, mesh))
    return jax.tree_util.tree_unflatten(treedef, out)


def _is_spec(x):
    return x is None or isinstance(x, P)


def _check_spec(name, shape, spec, mesh):
    names = tuple(mesh.axis_names)
    if spec is None:
        return P()
    if not isinstance(spec, P):
        raise TypeError(f"fit(param_sharding=...): parameter {name} got {spec!r}; expected a "
                        "jax.sharding.PartitionSpec")
    if len(spec) > len(shape):
        raise ValueError(f"fit(param_sharding=...): parameter {name} has shape {shape} but its spec {spec} names "
                         f"{len(spec)} dimensions")
    for d, entry in enumerate(spec):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        missing = [a for a in axes if a not in names]
        if missing:
            raise ValueError(f"fit(param_sharding=...): parameter {name}'s spec {spec} names mesh axis "
                             f"{missing[0]!r}, which the mesh does not have; its axes are {names}")
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if shape[d] % size:
            raise ValueError(f"fit(param_sharding=...): parameter {name} has shape {shape}; its dimension {d} "
                             f"({shape[d]}) is not divisible by the size of mesh axis {'x'.join(axes)} ({size}) "
                             f"in spec {spec}. Shard another dimension, or replicate it with P()")
    return spec


def state_shardings(state, specs, where: Placement, optimizer):
    """``FitState`` of shardings: the parameters' specs, the same for the optimizer state's
    parameter-shaped parts (found by ``optax.tree_utils.tree_map_params``), the rest replicated."""
    import optax

    named = jax.tree_util.tree_map(lambda s: NamedSharding(where.mesh, s), specs, is_leaf=_is_spec)
    opt = optax.tree_utils.tree_map_params(optimizer, lambda _, sh: sh, state.opt_state, named,
                                           transform_non_params=lambda _: where.replicated)
    return type(state)(named, opt, where.replicated)


def gather_for_checkpoint(state):
    """Every process's copy of ``state`` as whole arrays (a collective: all processes call it).

    One process: ``state`` itself (``np.asarray`` of a sharded array assembles it)."""
    if jax.process_count() == 1:
        return state
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(state, tiled=True)


def split_along(x, axis, dim, who):
    """``x`` with its dimension ``dim`` split along mesh axis ``axis`` of the mesh being traced
    under (``jax.set_mesh``, or ``fit(mesh=...)``): a ``jax.lax.with_sharding_constraint``.

    Refused with the fix (a ValueError naming ``who``): no mesh set, an axis the mesh lacks, an
    ``Explicit`` axis (ppl's interpreters re-stage programs without sharding-in-types), a size
    not divisible by the axis size."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or axis not in mesh.axis_names:
        raise ValueError(f"{who}(particle_axis={axis!r}): "
                         + ("no mesh is set" if mesh.empty else f"the current mesh has axes {mesh.axis_names}")
                         + "; call it under `with jax.set_mesh(mesh):` with a mesh that has that axis, or "
                         "inside fit(..., mesh=mesh)")
    if dict(zip(mesh.axis_names, mesh.axis_types))[axis] == AxisType.Explicit:
        raise ValueError(f"{who}(particle_axis={axis!r}): mesh axis {axis!r} is Explicit (jax.make_mesh's "
                         "default), which ppl's interpreters do not carry; make the mesh with Auto axes, "
                         "jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names)), "
                         "or run inside fit(..., mesh=mesh), which uses Auto axes")
    size, n = mesh.shape[axis], x.shape[dim]
    if n % size:
        raise ValueError(f"{who}(particle_axis={axis!r}): {n} particles are not divisible by the size of mesh "
                         f"axis {axis!r} ({size}); use a multiple of {size} particles")
    return jax.lax.with_sharding_constraint(x, P(*([None] * dim + [axis])))
