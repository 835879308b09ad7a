"""EF21 and EF21-W: error feedback with contractive compression, clients on a mesh axis.

Problem: minimize ``f(x) = (1/n) sum_i f_i(x)``, client ``i`` holding ``f_i`` (here ``f_i(x) =
loss(key, x, data_i)``; any scalar function of the parameters, e.g. a ppl objective's
estimate, whose ``jax.grad`` is the local gradient). Weights ``w_i > 0``, ``sum_i w_i = 1``
(EF21: ``w_i = 1/n``; EF21-W: ``w_i = L_i / sum_j L_j``). Gasanov, Richtarik et al. 2024,
"Error Feedback Reloaded", Algorithm 2:

- start: ``g_i^0 = grad f_i(x^0) / (n w_i)`` sent uncompressed, ``g^0 = sum_i w_i g_i^0``;
- round ``t``: ``x^{t+1} = x^t - gamma g^t``; client ``i`` sends
  ``c_i = C(grad f_i(x^{t+1}) / (n w_i) - g_i^t)`` and sets ``g_i^{t+1} = g_i^t + c_i``; the
  server sets ``g^{t+1} = g^t + sum_i w_i c_i``.

With ``w_i = 1/n`` this is EF21 (Richtarik et al. 2021). For a positively homogeneous ``C``
(Top-K, identity) ``h_i = n w_i g_i`` follows EF21's recursion exactly, so EF21-W and EF21
produce the same iterates from the same ``x^0`` and ``gamma``; what differs is the stepsize the
theory allows (``ef21_stepsize``: the arithmetic mean ``L_AM`` of the ``L_i`` instead of the
quadratic mean ``L_QM``; the paper's Theorem 3 extends the ``L_AM`` stepsize to EF21).

Variants: ``batch_size=b`` replaces ``grad f_i`` by the gradient on ``b`` of the client's
examples drawn without replacement each round (EF21-SGD); ``participation=p < 1`` lets each
client take part in a round with probability ``p`` independently (EF21-PP): a client that does
not take part computes nothing it sends, keeps ``g_i`` and sends no bytes, and the server adds
only the participants' ``w_i c_i``, so ``g = sum_i w_i g_i`` holds at every round.

Communication: the clients' messages are gathered along the mesh axis with ``all_gather`` as
(index, value) pairs (dense vectors with ``identity()``, reduced by ``psum``), so the uplink
moves what ``info.bytes_sent`` reports: per participating client ``compressor.message_bytes``.
The new iterate is computed by every device from the replicated ``g`` (no downlink bytes are
counted). ``info.loss`` and ``info.grad_norm_sq`` (of ``f`` and its gradient at the new iterate; with
``batch_size``, of the round's minibatch estimates of them) are diagnostics computed with extra
dense collectives that a deployment would not send.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from . import _clients
from .compress import Identity, decode


class EF21State(NamedTuple):
    params: Any            # x^t (replicated)
    g: jax.Array           # the server's estimate, flat (d,), replicated
    g_clients: jax.Array   # (n, d): g_i^t, split along the client axis
    round: jax.Array       # int32


class EF21Info(NamedTuple):
    loss: jax.Array            # f(x^t) after the round (diagnostic)
    grad_norm_sq: jax.Array    # ||grad f(x^t)||^2 (diagnostic)
    bytes_sent: jax.Array      # uplink bytes of this round (int)
    participants: jax.Array    # number of clients that sent


class EF21:
    """EF21 / EF21-W as a kernel: ``state = m.init(key, params, data)``, ``state, info =
    m.step(key, state, data)``, ``state, infos = m.run(key, state, data, num_rounds)``.

    ``loss(key, params, client_data) -> scalar``: one client's objective (``fit``'s loss
    signature, applied to one client's slice of ``data``). ``data``: a pytree whose leaves have
    a leading axis of ``n`` clients (then, for ``batch_size``, the client's examples).
    ``compressor``: from ``ppl.backends.distributed`` (``top_k``, ``rand_k``, ``identity``).
    ``stepsize``: ``gamma`` (see ``ef21_stepsize``). ``weights``: ``(n,)`` positive, normalized
    here; None for EF21's ``1/n``. ``mesh``/``axis``: the clients are split along that mesh axis
    (one device when ``mesh`` is None).
    """

    def __init__(self, loss, compressor, stepsize, *, weights=None, batch_size=None, participation=1.0,
                 mesh=None, axis="clients", name="ef21"):
        self.name = name
        if not callable(loss):
            raise TypeError(f"{name}(loss=...): expected a function loss(key, params, client_data) -> scalar")
        if not all(hasattr(compressor, a) for a in ("encode", "alpha", "message_bytes", "check")):
            raise TypeError(f"{name}(compressor={compressor!r}): expected a compressor such as top_k(k), rand_k(k) "
                            "or identity() from ppl.backends.distributed")
        if not (isinstance(stepsize, (int, float, np.floating)) and np.isfinite(stepsize) and stepsize > 0):
            raise ValueError(f"{name}(stepsize={stepsize!r}): must be a positive finite number")
        if not (isinstance(participation, (int, float)) and 0 < participation <= 1):
            raise ValueError(f"{name}(participation={participation!r}): the probability that a client takes part "
                             "in a round, in (0, 1]")
        if weights is not None:
            w = np.asarray(weights, np.float64)
            if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w <= 0):
                raise ValueError(f"{name}(weights=...): expected a vector of positive finite client weights, got "
                                 f"{weights!r}")
            weights = w / w.sum()
        self.loss, self.compressor, self.stepsize = loss, compressor, float(stepsize)
        self.weights, self.batch_size, self.participation = weights, batch_size, float(participation)
        self.mesh, self.axis = mesh, axis
        self._compiled = {}

    # -- setup -----------------------------------------------------------------------------
    def _setup(self, params, data):
        n = _clients.num_clients(data, self.name)
        mesh = _clients.client_mesh(self.mesh, self.axis, n, self.name)
        _clients.check_batch_size(self.batch_size, data, self.name)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        d = flat.shape[0]
        self.compressor.check(d)
        if self.weights is not None and self.weights.shape[0] != n:
            raise ValueError(f"{self.name}(weights=...): {self.weights.shape[0]} weights for {n} clients")
        w = np.full(n, 1.0 / n) if self.weights is None else self.weights
        scale = jnp.asarray(1.0 / (n * w), flat.dtype)  # 1 / (n w_i)
        return n, mesh, d, flat, unravel, jnp.asarray(w, flat.dtype), scale

    def _client_grad(self, unravel, x, key, data_i):
        kb, kl = jax.random.split(key)
        batch = _clients.minibatch(kb, data_i, self.batch_size)
        v, g = jax.value_and_grad(self.loss, argnums=1)(kl, unravel(x), batch)
        return v, jax.flatten_util.ravel_pytree(g)[0]

    def init(self, key, params, data) -> EF21State:
        """``g_i^0 = grad f_i(x^0) / (n w_i)`` (sent dense), ``g^0 = sum_i w_i g_i^0``."""
        n, mesh, d, flat, unravel, w, scale = self._setup(params, data)
        ax = self.axis

        def shard(x, key, data, w, scale):
            keys = _clients.client_keys(key, ax, scale.shape[0])
            _, grads = jax.vmap(lambda k, di: self._client_grad(unravel, x, k, di))(keys, data)
            gi = grads * scale[:, None]
            return jax.lax.psum(jnp.sum(w[:, None] * gi, 0), ax), gi

        f = jax.jit(_clients.sharded(shard, mesh, ax, (P(), P(), P(ax), P(ax), P(ax)), (P(), P(ax))))
        g, gi = f(flat, key, data, w, scale)
        return EF21State(params, g, gi, jnp.zeros((), jnp.int32))

    def init_bytes(self, params, n):
        """Bytes of the start (every client's dense gradient)."""
        flat, _ = jax.flatten_util.ravel_pytree(params)
        return n * Identity().message_bytes(flat.shape[0], flat.dtype)

    # -- one round ---------------------------------------------------------------------------
    def _round_fn(self, mesh, d, unravel, dtype, n):
        C, ax, gamma, p = self.compressor, self.axis, self.stepsize, self.participation
        per_client = C.message_bytes(d, dtype)
        dense = isinstance(C, Identity)

        def shard(x, g, gi, rkey, data, w, scale):
            n_local = gi.shape[0]
            x = x - gamma * g
            keys = _clients.client_keys(rkey, ax, n_local)

            def client(k, g_i, data_i, s):
                kg, kc, kp = jax.random.split(k, 3)
                v, grad = self._client_grad(unravel, x, kg, data_i)
                msg = C.encode(kc, grad * s - g_i)
                sent = jax.random.bernoulli(kp, p) if p < 1 else jnp.array(True)
                c = jnp.where(sent, decode(msg, d), 0)
                return v, grad, msg, sent, g_i + c

            v, grads, msgs, sent, gi = jax.vmap(client)(keys, gi, data, scale)
            coef = jnp.where(sent, w, 0).astype(dtype)
            if dense:  # a dense uplink is a reduction
                g = g + jax.lax.psum(jnp.sum(coef[:, None] * msgs.values, 0), ax)
            else:      # gather the (index, value) pairs; every device decodes the weighted sum
                idx = jax.lax.all_gather(msgs.indices, ax, tiled=True)
                val = jax.lax.all_gather(msgs.values, ax, tiled=True)
                cw = jax.lax.all_gather(coef, ax, tiled=True)
                g = g + jnp.zeros((d,), dtype).at[idx.ravel()].add((cw[:, None] * val).ravel())
            count = jax.lax.psum(jnp.sum(sent.astype(jnp.int32)), ax)
            loss = jax.lax.psum(jnp.sum(v), ax) / n
            full = jax.lax.psum(jnp.sum(grads, 0), ax) / n
            info = EF21Info(loss, jnp.sum(full ** 2), count * per_client, count)
            return x, g, gi, info

        return _clients.sharded(shard, mesh, ax, (P(), P(), P(ax), P(), P(ax), P(ax), P(ax)),
                                (P(), P(), P(ax), P()))

    def _prepared(self, state, data):
        n, mesh, d, flat, unravel, w, scale = self._setup(state.params, data)
        cache_key = (n, d, flat.dtype, jax.tree.structure(state.params))
        if cache_key not in self._compiled:
            rnd = self._round_fn(mesh, d, unravel, flat.dtype, n)

            def step(key, state, data):
                x, _ = jax.flatten_util.ravel_pytree(state.params)
                x, g, gi, info = rnd(x, state.g, state.g_clients, jax.random.fold_in(key, state.round), data, w, scale)
                return EF21State(unravel(x), g, gi, state.round + 1), info

            def run(key, state, data, num_rounds):
                return jax.lax.scan(lambda s, _: step(key, s, data), state, None, length=num_rounds)

            self._compiled[cache_key] = (jax.jit(step), jax.jit(run, static_argnums=3))
        return self._compiled[cache_key]

    def step(self, key, state: EF21State, data):
        """One round; the round's randomness is ``fold_in(key, state.round)``, then
        ``fold_in(., client)`` per client."""
        return self._prepared(state, data)[0](key, state, data)

    def run(self, key, state: EF21State, data, num_rounds: int):
        """``num_rounds`` rounds in one compiled ``lax.scan``; infos stacked along a leading axis.
        Equal to calling ``step(key, ...)`` that many times."""
        return self._prepared(state, data)[1](key, state, data, int(num_rounds))


def ef21(loss, compressor, stepsize, *, batch_size=None, participation=1.0, mesh=None, axis="clients") -> EF21:
    """EF21 (uniform weights ``1/n``); see :class:`EF21` and the module docstring."""
    return EF21(loss, compressor, stepsize, batch_size=batch_size, participation=participation, mesh=mesh,
                axis=axis, name="ef21")


def ef21_w(loss, compressor, stepsize, *, smoothness, batch_size=None, participation=1.0, mesh=None,
           axis="clients") -> EF21:
    """EF21-W: weights ``w_i = L_i / sum_j L_j`` from the clients' smoothness constants
    ``smoothness`` (``(n,)``); use ``ef21_stepsize(smoothness, alpha, mean="arithmetic")``."""
    return EF21(loss, compressor, stepsize, weights=smoothness, batch_size=batch_size,
                participation=participation, mesh=mesh, axis=axis, name="ef21_w")
