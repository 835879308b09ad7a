"""DIFF2: differentially private optimization via gradient differences (Murata & Suzuki, ICML
2023), with DP-GD as its special case, clients on a mesh axis.

Problem: minimize the empirical loss over ``n = P n_p`` examples held by ``P`` clients
(``n_p`` each); ``loss(key, params, batch)`` is ``fit``'s loss, evaluated on one-example
batches to get per-example gradients ``grad l(x, z)``. With ``ClippedMean(S, C) = (1/|S|)
sum_{s in S} s min(1, C / ||s||)``, round ``r = 1, 2, ...`` (``x_0`` the start, ``x_{-1} =
x_0``):

- restart (``r = 1 mod T``): ``v_r = mean_p ClippedMean_p{grad l(x_{r-1}, z)}_{C_1} + xi_r``,
  ``xi_r ~ N(0, (sigma Delta_1)^2 I)``, ``Delta_1 = 2 C_1 / n``;
- otherwise: ``v_r = v_{r-1} + mean_p ClippedMean_p{grad l(x_{r-1}, z) - grad l(x_{r-2},
  z)}_{C_{2,r}} + xi_r``, radius ``C_{2,r} = C_2 ||x_{r-1} - x_{r-2}||``, ``xi_r ~ N(0,
  (sigma Delta_{2,r})^2 I)``, ``Delta_{2,r} = 2 C_{2,r} / n``;
- gradient-descent routine: ``x_r = x_{r-1} - eta v_r``.

``Delta`` is the L2 sensitivity of the released mean when one example is replaced by another
(clients of equal size: one client's clipped mean moves by at most ``2 C / n_p``, the mean over
clients by ``2 C / n``). Each round is then a Gaussian mechanism with noise multiplier
``sigma``; the radius ``C_{2,r}`` depends only on earlier releases, and ``v_r`` is
post-processing, so ``R`` rounds compose as ``R`` Gaussian mechanisms (``ceil(R/T)`` restarts
with multiplier ``sigma_1``, the others with ``sigma_2``): ``diff2_noise_multipliers(epsilon,
delta, R, period=T, ratio=sigma_2/sigma_1)`` finds them with dp-accounting's RDP accountant
(the split of the budget between restart and difference rounds is the user's choice; the
formulas above write ``sigma`` for the round's multiplier). The noise is drawn once per round from the round key (a trusted
aggregator: central DP; every device draws the same vector, so the result is replicated).
With ``T = 1`` every round is a restart: DP-GD (``dp_gd``).

Communication per round: each client sends its clipped mean, ``d`` values (``info.bytes_sent``).
"""
from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from . import _clients


class DIFF2State(NamedTuple):
    params: Any          # x_{r-1}
    prev: jax.Array      # x_{r-2}, flat
    v: jax.Array         # v_{r-1}, flat
    round: jax.Array     # r - 1 (rounds done)


class DIFF2Info(NamedTuple):
    loss: jax.Array          # the empirical loss at x_{r-1} (non-private diagnostic)
    restart: jax.Array       # bool: was this a restart round
    radius: jax.Array        # the clipping radius of this round (C_1 or C_2 ||x_{r-1} - x_{r-2}||)
    noise_std: jax.Array     # sigma * 2 * radius / n
    bytes_sent: jax.Array


def clipped_mean(s, c):
    """``(1/|S|) sum_s s min(1, c / ||s||)`` over the leading axis of ``s`` (``(m, d)``)."""
    norms = jnp.linalg.norm(s, axis=1, keepdims=True)
    return jnp.mean(s * jnp.minimum(1.0, c / jnp.maximum(norms, jnp.finfo(s.dtype).tiny)), 0)


def _positive(name, who, v):
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0):
        raise ValueError(f"{who}({name}={v!r}): must be a positive finite number")


class DIFF2:
    """DIFF2 with the gradient-descent routine as a kernel (``init``, ``step``, ``run``; see
    :class:`ppl.backends.distributed.EF21` for the conventions). ``data``: leaves of shape
    ``(clients, examples, ...)``; every client holds the same number of examples."""

    def __init__(self, loss, *, stepsize, noise_multiplier, clip, clip_diff=None, period=1,
                 diff_noise_multiplier=None, mesh=None, axis="clients", name="diff2"):
        self.name = name
        if not callable(loss):
            raise TypeError(f"{name}(loss=...): expected a function loss(key, params, batch) -> scalar")
        _positive("stepsize", name, stepsize)
        _positive("clip", name, clip)
        if not (isinstance(noise_multiplier, (int, float)) and np.isfinite(noise_multiplier)
                and noise_multiplier >= 0):
            raise ValueError(f"{name}(noise_multiplier={noise_multiplier!r}): must be >= 0 (0: no privacy); find it "
                             "with diff2_noise_multiplier(epsilon, delta, rounds)")
        if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 1:
            raise ValueError(f"{name}(period={period!r}): the restart period T must be a positive integer")
        if period > 1:
            if clip_diff is None:
                raise ValueError(f"{name}(clip_diff=None): difference rounds (period > 1) need C_2, the clipping "
                                 "radius per unit of ||x_{r-1} - x_{r-2}|| (e.g. the per-example smoothness)")
            _positive("clip_diff", name, clip_diff)
        if diff_noise_multiplier is None:
            diff_noise_multiplier = noise_multiplier
        elif not (isinstance(diff_noise_multiplier, (int, float)) and np.isfinite(diff_noise_multiplier)
                  and diff_noise_multiplier >= 0):
            raise ValueError(f"{name}(diff_noise_multiplier={diff_noise_multiplier!r}): must be >= 0")
        self.loss, self.stepsize, self.sigma = loss, float(stepsize), float(noise_multiplier)
        self.sigma_diff = float(diff_noise_multiplier)
        self.clip, self.clip_diff, self.period = float(clip), None if clip_diff is None else float(clip_diff), int(period)
        self.mesh, self.axis = mesh, axis

    def _example_grads(self, unravel, x, key, examples):
        def one(k, ex):
            g = jax.grad(self.loss, argnums=1)(k, unravel(x), jax.tree.map(lambda a: a[None], ex))
            return jax.flatten_util.ravel_pytree(g)[0]

        m = jax.tree_util.tree_leaves(examples)[0].shape[0]
        return jax.vmap(one)(jax.random.split(key, m), examples)

    def init(self, key, params, data) -> DIFF2State:
        del key
        n_clients = _clients.num_clients(data, self.name)
        _clients.client_mesh(self.mesh, self.axis, n_clients, self.name)
        _clients.check_batch_size(1, data, self.name)  # leaves (clients, examples, ...)
        flat, _ = jax.flatten_util.ravel_pytree(params)
        return DIFF2State(params, flat, jnp.zeros_like(flat), jnp.zeros((), jnp.int32))

    def _hyper(self, dtype):
        """The hyperparameters as a runtime argument: new values do not recompile."""
        return jnp.asarray([self.stepsize, self.sigma, self.sigma_diff, self.clip, self.clip_diff or 0.0], dtype)

    def _prepared(self, state, data):
        n_clients = _clients.num_clients(data, self.name)
        mesh = _clients.client_mesh(self.mesh, self.axis, n_clients, self.name)
        m = jax.tree_util.tree_leaves(data)[0].shape[1]
        flat, unravel = jax.flatten_util.ravel_pytree(state.params)
        d, n = flat.shape[0], n_clients * m
        ck = (n_clients, m, d, flat.dtype, jax.tree.structure(state.params), self.period, mesh.devices.shape,
              mesh.axis_names)
        if ck in _CACHE.get(self.loss, {}):
            return _CACHE[self.loss][ck]
        ax, T = self.axis, self.period
        per_client = d * np.dtype(flat.dtype).itemsize

        def shard(x, prev, v, rnd, rkey, data, hp):
            eta, s1, s2, C1, C2 = hp
            restart = (rnd % T) == 0
            radius = C1 if T == 1 else jnp.where(restart, C1, C2 * jnp.linalg.norm(x - prev))
            sigma = s1 if T == 1 else jnp.where(restart, s1, s2)
            ckey, nkey = jax.random.split(rkey)
            keys = _clients.client_keys(ckey, ax, jax.tree_util.tree_leaves(data)[0].shape[0])

            def client(k, ex):
                g = self._example_grads(unravel, x, k, ex)
                loss = jnp.mean(jax.vmap(lambda e: self.loss(k, unravel(x), jax.tree.map(lambda a: a[None], e)))(ex))
                if T == 1:
                    return clipped_mean(g, radius), loss
                g_prev = self._example_grads(unravel, prev, k, ex)
                return clipped_mean(jnp.where(restart, g, g - g_prev), radius), loss

            cm, losses = jax.vmap(client)(keys, data)
            mean = jax.lax.psum(jnp.sum(cm, 0), ax) / n_clients
            std = sigma * 2 * radius / n
            v = jnp.where(restart, 0, v) + mean + std * jax.random.normal(nkey, (d,), x.dtype)
            info = DIFF2Info(jax.lax.psum(jnp.sum(losses), ax) / n_clients, restart, jnp.asarray(radius, x.dtype),
                             jnp.asarray(std, x.dtype), jnp.asarray(n_clients * per_client))
            return x - eta * v, x, v, info

        rnd_fn = _clients.sharded(shard, mesh, ax, (P(), P(), P(), P(), P(), P(ax), P()), (P(), P(), P(), P()))

        def step(key, state, data, hp):
            x, _ = jax.flatten_util.ravel_pytree(state.params)
            x_new, x_old, v, info = rnd_fn(x, state.prev, state.v, state.round, jax.random.fold_in(key, state.round),
                                           data, hp)
            return DIFF2State(unravel(x_new), x_old, v, state.round + 1), info

        def run(key, state, data, hp, num_rounds):
            return jax.lax.scan(lambda s, _: step(key, s, data, hp), state, None, length=num_rounds)

        _CACHE.setdefault(self.loss, {})[ck] = (jax.jit(step), jax.jit(run, static_argnums=4))
        return _CACHE[self.loss][ck]

    def step(self, key, state: DIFF2State, data):
        """One round; its randomness is ``fold_in(key, state.round)``."""
        x, _ = jax.flatten_util.ravel_pytree(state.params)
        return self._prepared(state, data)[0](key, state, data, self._hyper(x.dtype))

    def run(self, key, state: DIFF2State, data, num_rounds: int):
        """``num_rounds`` rounds in one compiled ``lax.scan`` (equal to repeated ``step``)."""
        x, _ = jax.flatten_util.ravel_pytree(state.params)
        return self._prepared(state, data)[1](key, state, data, self._hyper(x.dtype), int(num_rounds))


# compiled rounds per loss function and shapes: a new DIFF2 with other hyperparameters reuses them
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def diff2(loss, *, stepsize, noise_multiplier, clip, clip_diff, period, diff_noise_multiplier=None, mesh=None,
          axis="clients") -> DIFF2:
    """DIFF2 with restart period ``T = period``, ``C_1 = clip``, ``C_2 = clip_diff``; noise
    multipliers from :func:`diff2_noise_multipliers`."""
    return DIFF2(loss, stepsize=stepsize, noise_multiplier=noise_multiplier, clip=clip, clip_diff=clip_diff,
                 period=period, diff_noise_multiplier=diff_noise_multiplier, mesh=mesh, axis=axis, name="diff2")


def dp_gd(loss, *, stepsize, noise_multiplier, clip, mesh=None, axis="clients") -> DIFF2:
    """DP-GD: ``x <- x - eta (mean clipped gradient + N(0, (sigma 2 C / n)^2 I))``; DIFF2 with
    ``T = 1``."""
    return DIFF2(loss, stepsize=stepsize, noise_multiplier=noise_multiplier, clip=clip, period=1, mesh=mesh,
                 axis=axis, name="dp_gd")


def _event(sigma, rounds, period, ratio):
    import dp_accounting

    restarts = -(-int(rounds) // int(period))
    events = [dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), restarts)]
    if rounds > restarts:
        events.append(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(ratio * sigma),
                                                        int(rounds) - restarts))
    return dp_accounting.ComposedDpEvent(events)


def dp_epsilon(noise_multiplier, rounds, delta, *, period=1, diff_noise_multiplier=None) -> float:
    """The epsilon at ``delta`` of ``rounds`` rounds of DIFF2 (restart period ``period``; restart
    rounds with ``noise_multiplier``, difference rounds with ``diff_noise_multiplier``, by
    default the same), i.e. of that many Gaussian mechanisms, by dp-accounting's RDP accountant
    (``pip install dp-accounting``: the ``dp`` extra). ``period=1``: DP-GD."""
    _check_budget(1.0, delta, rounds, period, "dp_epsilon")
    from dp_accounting.rdp import rdp_privacy_accountant

    s = float(noise_multiplier)
    ratio = 1.0 if diff_noise_multiplier is None else float(diff_noise_multiplier) / s
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(_event(s, rounds, period, ratio))
    return float(acc.get_epsilon(delta))


def diff2_noise_multipliers(epsilon, delta, rounds, *, period=1, ratio=1.0) -> tuple[float, float]:
    """``(sigma_restart, sigma_diff)`` with ``sigma_diff = ratio * sigma_restart``, the smallest
    (to dp-accounting's calibration tolerance, 1e-6) for which ``rounds`` rounds of DIFF2 with
    restart period ``period`` are ``(epsilon, delta)``-DP by the RDP accountant: pass them as
    ``noise_multiplier`` and ``diff_noise_multiplier``. ``period=1``: DP-GD's multiplier."""
    _check_budget(epsilon, delta, rounds, period, "diff2_noise_multipliers")
    if not (isinstance(ratio, (int, float)) and np.isfinite(ratio) and ratio > 0):
        raise ValueError(f"diff2_noise_multipliers(ratio={ratio!r}): must be positive and finite")
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    s = float(dp_accounting.calibrate_dp_mechanism(
        rdp_privacy_accountant.RdpAccountant, lambda s: _event(s, rounds, period, ratio),
        float(epsilon), float(delta), bracket_interval=dp_accounting.ExplicitBracketInterval(1e-3, 1e4),
        tol=1e-6))
    return s, ratio * s


def _check_budget(epsilon, delta, rounds, period, who):
    if not (isinstance(epsilon, (int, float)) and np.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"{who}(epsilon={epsilon!r}): must be a positive finite number")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"{who}(delta={delta!r}): must be in (0, 1)")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"{who}(rounds={rounds!r}): a positive integer")
    if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 1:
        raise ValueError(f"{who}(period={period!r}): a positive integer")
