"""FedAMD (anchor sampling for federated learning with partial client participation) and
FedAvg, clients on a mesh axis.

``N`` clients hold data sets of possibly different sizes (:func:`stack_clients` pads them to one
shape and records the counts). Each round ``t`` a uniformly random set of ``A`` clients takes
part (``clients_per_round``; the same set on every device, drawn from the round key).

FedAMD: the server keeps every client's anchor gradient ``G_i`` (initialized with each
client's full-batch gradient at ``x_0``) and the direction ``d = (1/N) sum_i G_i`` (at the
start of the round). Each participant is an **anchor** with probability ``p``
(``anchor_probability``) and otherwise a **miner**:

- an anchor sends ``G_i <- grad f_i(x_t)`` on its whole data set;
- a miner runs ``K`` (``local_steps``) variance-reduced steps from ``y_0 = x_t``, ``v_0 = d``:
  ``y_1 = y_0 - eta_l v_0`` and, for ``k = 1 .. K - 1``, ``v_k = v_{k-1} + grad l(y_k; B_k) -
  grad l(y_{k-1}; B_k)`` (one minibatch ``B_k`` at both points), ``y_{k+1} = y_k - eta_l v_k``;
  it sends ``Delta_i = x_t - y_K``.

The server sets ``x_{t+1} = x_t - eta_g mean_{miners} Delta_i`` (unchanged when there is no
miner) and stores the anchors' ``G_i``. FedAvg: every participant runs ``K`` SGD steps
``y_{k+1} = y_k - eta_l grad l(y_k; B_k)`` and the server averages ``Delta_i`` the same way.

Minibatches: ``batch_size`` examples drawn uniformly **with** replacement from the client's
examples (clients may hold fewer than ``batch_size``). ``loss(key, params, batch)`` is ``fit``'s
loss; the full-batch gradient is that of the mean of ``loss`` on one-example batches over the
client's examples. Bytes: each participant sends ``d`` values (``Delta_i`` or ``G_i``). Every
client's both branches are computed and the right one selected (``where``): the simulation's
cost is that of all ``N`` clients, not ``A``.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from . import _clients


class FedState(NamedTuple):
    params: Any
    anchors: jax.Array   # (N, d): G_i (FedAMD; zeros (N, 0) for FedAvg), split along the client axis
    round: jax.Array


class FedInfo(NamedTuple):
    participants: jax.Array   # (N,) bool
    anchors: jax.Array        # (N,) bool: participants that were anchors
    bytes_sent: jax.Array


def stack_clients(parts):
    """``[client_data_0, ...]`` (pytrees of arrays with a leading example axis of any length) ->
    ``(data, counts)``: leaves ``(N, max_count, ...)`` zero-padded, and ``counts`` ``(N,)``."""
    if not parts:
        raise ValueError("stack_clients: no clients")
    counts = np.array([jax.tree_util.tree_leaves(p)[0].shape[0] for p in parts])
    if np.any(counts == 0):
        raise ValueError(f"stack_clients: clients {np.flatnonzero(counts == 0).tolist()} hold no examples")
    M = int(counts.max())

    def pad(*leaves):
        return np.stack([np.concatenate([a, np.zeros((M - a.shape[0],) + a.shape[1:], a.dtype)]) for a in leaves])

    return jax.tree.map(pad, *parts), counts


class Federated:
    """FedAMD or FedAvg as a kernel (``init(key, params, data, counts)``, ``step``, ``run``)."""

    def __init__(self, loss, *, local_steps, local_lr, global_lr=1.0, batch_size, clients_per_round,
                 anchor_probability=None, mesh=None, axis="clients", name):
        self.name = name
        if not callable(loss):
            raise TypeError(f"{name}(loss=...): expected a function loss(key, params, batch) -> scalar")
        for k, v in (("local_steps", local_steps), ("batch_size", batch_size), ("clients_per_round", clients_per_round)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}({k}={v!r}): must be a positive integer")
        for k, v in (("local_lr", local_lr), ("global_lr", global_lr)):
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ValueError(f"{name}({k}={v!r}): must be a positive finite number")
        if anchor_probability is not None and not (isinstance(anchor_probability, (int, float))
                                                   and 0 < anchor_probability < 1):
            raise ValueError(f"{name}(anchor_probability={anchor_probability!r}): the probability that a participant "
                             "is an anchor, in (0, 1)")
        self.loss, self.K, self.eta_l, self.eta_g = loss, int(local_steps), float(local_lr), float(global_lr)
        self.b, self.A, self.p = int(batch_size), int(clients_per_round), anchor_probability
        self.mesh, self.axis = mesh, axis
        self._compiled = {}

    def _check(self, params, data, counts):
        N = _clients.num_clients(data, self.name)
        mesh = _clients.client_mesh(self.mesh, self.axis, N, self.name)
        counts = np.asarray(counts)
        M = jax.tree_util.tree_leaves(data)[0].shape[1] if jax.tree_util.tree_leaves(data)[0].ndim > 1 else 0
        if counts.shape != (N,) or np.any(counts < 1) or np.any(counts > M):
            raise ValueError(f"{self.name}(counts=...): expected {N} example counts in [1, {M}] (stack_clients gives "
                             f"them), got {counts.tolist()}")
        if self.A > N:
            raise ValueError(f"{self.name}(clients_per_round={self.A}): more than the {N} clients")
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        return N, mesh, flat, unravel

    def _full_grad(self, unravel, x, key, ex, count):
        M = jax.tree_util.tree_leaves(ex)[0].shape[0]
        mask = (jnp.arange(M) < count).astype(x.dtype)

        def mean_loss(u):
            per = jax.vmap(lambda e: self.loss(key, unravel(u), jax.tree.map(lambda a: a[None], e)))(ex)
            return jnp.sum(per * mask) / count

        return jax.grad(mean_loss)(x)

    def _batch_grad(self, unravel, y, key, ex, count):
        kb, kl = jax.random.split(key)
        idx = jnp.floor(jax.random.uniform(kb, (self.b,)) * count).astype(jnp.int32)
        batch = jax.tree.map(lambda a: a[idx], ex)
        return jax.flatten_util.ravel_pytree(jax.grad(self.loss, argnums=1)(kl, unravel(y), batch))[0]

    def init(self, key, params, data, counts) -> FedState:
        N, mesh, flat, unravel = self._check(params, data, counts)
        if self.p is None:
            return FedState(params, jnp.zeros((N, 0), flat.dtype), jnp.zeros((), jnp.int32))
        ax = self.axis

        def shard(x, key, data, counts):
            keys = _clients.client_keys(key, ax, counts.shape[0])
            return jax.vmap(lambda k, ex, c: self._full_grad(unravel, x, k, ex, c))(keys, data, counts)

        G = jax.jit(_clients.sharded(shard, mesh, ax, (P(), P(), P(ax), P(ax)), P(ax)))(
            flat, key, data, jnp.asarray(counts))
        return FedState(params, G, jnp.zeros((), jnp.int32))

    def _prepared(self, state, data, counts):
        N, mesh, flat, unravel = self._check(state.params, data, counts)
        d = flat.shape[0]
        ck = (N, d, flat.dtype, jax.tree.structure(state.params), jax.tree.structure(data))
        if ck in self._compiled:
            return self._compiled[ck]
        ax, K, eta_l, eta_g, A, p = self.axis, self.K, self.eta_l, self.eta_g, self.A, self.p
        amd = p is not None
        per_client = d * np.dtype(flat.dtype).itemsize

        def shard(x, G, rkey, data, counts):
            n_local = counts.shape[0]
            pkey, ckey = jax.random.split(rkey)
            chosen = jnp.zeros((N,), bool).at[jax.random.permutation(pkey, N)[:A]].set(True)
            part = jax.lax.dynamic_slice_in_dim(chosen, jax.lax.axis_index(ax) * n_local, n_local)
            keys = _clients.client_keys(ckey, ax, n_local)
            direction = jax.lax.psum(jnp.sum(G, 0), ax) / N if amd else None

            def client(k, ex, c, g_i):
                ka, kl = jax.random.split(k)
                anchor = jax.random.bernoulli(ka, p) if amd else jnp.array(False)

                def local(carry, kk):
                    y_prev, y, v = carry
                    if amd:
                        v = v + self._batch_grad(unravel, y, kk, ex, c) - self._batch_grad(unravel, y_prev, kk, ex, c)
                    else:
                        v = self._batch_grad(unravel, y, kk, ex, c)
                    return (y, y - eta_l * v, v), None

                if amd:
                    y1 = x - eta_l * direction
                    (_, yK, _), _ = jax.lax.scan(local, (x, y1, direction), jax.random.split(kl, K - 1))
                    g_new = jnp.where(anchor, self._full_grad(unravel, x, kl, ex, c), g_i)
                else:
                    (_, yK, _), _ = jax.lax.scan(local, (x, x, jnp.zeros_like(x)), jax.random.split(kl, K))
                    g_new = g_i
                return x - yK, anchor, g_new

            delta, anchor, G_new = jax.vmap(client)(keys, data, counts, G)
            anchor = anchor & part
            miner = part & ~anchor
            G = jnp.where(anchor[:, None], G_new, G) if amd else G
            total = jax.lax.psum(jnp.sum(jnp.where(miner[:, None], delta, 0), 0), ax)
            n_miners = jax.lax.psum(jnp.sum(miner), ax)
            x = x - eta_g * total / jnp.maximum(n_miners, 1)
            info = FedInfo(jax.lax.all_gather(part, ax, tiled=True), jax.lax.all_gather(anchor, ax, tiled=True),
                           jnp.asarray(A * per_client))
            return x, G, info

        rnd = _clients.sharded(shard, mesh, ax, (P(), P(ax), P(), P(ax), P(ax)), (P(), P(ax), P()))

        def step(key, state, data, counts):
            x, _ = jax.flatten_util.ravel_pytree(state.params)
            x, G, info = rnd(x, state.anchors, jax.random.fold_in(key, state.round), data, counts)
            return FedState(unravel(x), G, state.round + 1), info

        def run(key, state, data, counts, num_rounds):
            return jax.lax.scan(lambda s, _: step(key, s, data, counts), state, None, length=num_rounds)

        self._compiled[ck] = (jax.jit(step), jax.jit(run, static_argnums=4))
        return self._compiled[ck]

    def step(self, key, state, data, counts):
        return self._prepared(state, data, counts)[0](key, state, data, jnp.asarray(counts))

    def run(self, key, state, data, counts, num_rounds):
        return self._prepared(state, data, counts)[1](key, state, data, jnp.asarray(counts), int(num_rounds))


def fedamd(loss, *, local_steps=10, local_lr=0.01, global_lr=1.0, batch_size=64, clients_per_round=10,
           anchor_probability=0.2, mesh=None, axis="clients") -> Federated:
    """FedAMD (defaults: the reference's ``K = 10, eta_l = 0.01, eta_g = 1, batch 64, A = 10,
    p = 0.2``); see the module docstring."""
    if anchor_probability is None:
        raise ValueError("fedamd(anchor_probability=None): FedAMD needs p in (0, 1); fedavg(...) has no anchors")
    return Federated(loss, local_steps=local_steps, local_lr=local_lr, global_lr=global_lr, batch_size=batch_size,
                     clients_per_round=clients_per_round, anchor_probability=anchor_probability, mesh=mesh,
                     axis=axis, name="fedamd")


def fedavg(loss, *, local_steps=10, local_lr=0.01, global_lr=1.0, batch_size=64, clients_per_round=10, mesh=None,
           axis="clients") -> Federated:
    """FedAvg: ``K`` local SGD steps per participant, the server averages ``x_t - y_K``."""
    return Federated(loss, local_steps=local_steps, local_lr=local_lr, global_lr=global_lr, batch_size=batch_size,
                     clients_per_round=clients_per_round, anchor_probability=None, mesh=mesh, axis=axis,
                     name="fedavg")
