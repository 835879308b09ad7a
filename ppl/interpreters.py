"""Interpreters: each maps a program to a function.

=================  =====================================================================
simulate           ``simulate(p)(key, *args) -> Trace``: sample every choice.
assess             ``assess(p)(choices, *args) -> (log_density, retval)``: no randomness.
generate           ``generate(p)(key, constraints, *args) -> (Trace, log_weight)``:
                   constrained choices take the given values; the weight is the log density
                   of the constrained and observed choices (importance sampling with the
                   program's own prior as proposal).
importance         ``importance(model, proposal)(key, observations, *args)``: the proposal
                   samples the latent choices; weight ``log p(x, y) - log q(x)``.
replay             ``replay(p, trace)(key, *args) -> Trace``: reuse the trace's values where
                   the program visits their addresses.
condition          ``condition(p, choices) -> program``: the choices become observations.
call               ``call(address, p, *args)``: run ``p`` inside another program with its
                   addresses under ``address`` (hierarchical addresses).
=================  =====================================================================

``simulate``, ``generate``, ``assess``, ``replay`` and ``harvest`` are thin wrappers of one
traced run (``_traced_run``): a choice's value comes from ``obs=``, else from the constraints,
else from the run's strategy object: ``_Draw(key)`` (draw from a key), ``_ScoreOnly()`` (every
value must be given: assess) or ``_Keep()`` (the choice stays random: harvest). ``call`` and
``condition`` re-emit the program (``Reemit``).

All of them compose with ``jit``, ``vmap`` and ``grad`` (they are ordinary JAX functions once
the program is staged). Random choices inside ``lax.scan`` get values stacked along the scan
axis under one address; inside ``jax.vmap`` they gain the mapped axes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ._interp import Handler, latent_addresses, rescan, run, site_addresses, stage
from ._site import Site, bind_site, det_p, fmt_address, normalize_address
from .choicemap import ChoiceMap

__all__ = ["AddressMismatchError", "Trace", "simulate", "assess", "generate", "importance", "replay", "condition", "call", "harvest"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trace:
    """The record of one execution: choices, their total log density, the return value."""

    choices: ChoiceMap
    score: Any
    retval: Any
    deterministics: ChoiceMap


_stage = stage


def _split(key):
    k1, k2 = jax.random.split(key)
    return k1, k2


# ---------------------------------------------------------------------------------------
# how a choice gets its value: constraints first, then the run's strategy


class _Strategy:
    """What a traced run does at a random choice that neither ``obs=`` nor a constraint fixes.

    ``value(site, d, who)`` gives its value; ``deterministic`` treats a record; a ``lax.scan``
    body gets ``child(x)`` per iteration from ``scan_xs(length)`` (sliced along the scan), a
    ``lax.cond`` branch gets ``child(cond_x())``.
    """

    def value(self, site, d, who):
        raise NotImplementedError

    def deterministic(self, addr, value, batch):
        return value

    def scan_xs(self, length):
        return None

    def cond_x(self):
        return None

    def child(self, x):
        return self


class _Draw(_Strategy):
    """Draw from a key (simulate, generate, replay): each choice and each scan iteration or
    cond gets its own split of the key."""

    def __init__(self, key):
        self.key = key

    def value(self, site, d, who):
        self.key, sub = _split(self.key)
        return d.sample(sub)

    def scan_xs(self, length):
        self.key, sub = _split(self.key)
        return jax.random.split(sub, length)

    def cond_x(self):
        self.key, sub = _split(self.key)
        return sub

    def child(self, key):
        return _Draw(key)


class _ScoreOnly(_Strategy):
    """Score only (assess): every sampled choice must come from the constraints."""

    def value(self, site, d, who):
        raise _MissingChoice(site.addr,
            f"{who}: no value for address {fmt_address(site.addr)!r}, which the program "
            "samples. Supply every sampled address in the choice map, or use "
            "ppl.generate(program)(key, constraints, *args) to sample the missing ones.")


class _Keep(_Strategy):
    """Keep the choice random (harvest): the site and records are re-emitted, so an enclosing
    interpreter (ADEV) gives the value; the trace holds what it gives."""

    def value(self, site, d, who):
        return rebind_site(site)

    def deterministic(self, addr, value, batch):
        return det_p.bind(value, addr=addr, batch=batch)


class _TraceHandler(Handler):
    """Records a trace: choices, records, score and weight; values from constraints first,
    then from the strategy."""

    def __init__(self, strategy: _Strategy, constraints: dict, who: str):
        self.strategy = strategy
        self.constraints = constraints
        self.who = who
        self.choices: dict = {}
        self.dets: dict = {}
        self.score = jnp.zeros(())
        self.weight = jnp.zeros(())
        self.visited: set = set()

    def _claim(self, addr):
        if addr in self.choices or addr in self.dets:
            raise ValueError(
                f"address {fmt_address(addr)!r} is used twice in one execution of the program. "
                "Give each random choice its own address (e.g. f'x_{i}' in a Python loop), call "
                "sub-programs under distinct prefixes with ppl.call, or use jax.vmap / lax.scan, "
                "which give one address to a whole array of choices.")

    def sample(self, site: Site):
        addr = site.addr
        self._claim(addr)
        d = site.dist()
        scale = site.scale  # ppl.plate's size / subsample_size (1.0 outside subsampling plates)

        def log_density(value):
            lp = jnp.sum(d.log_prob(value))
            return lp if scale == 1.0 else scale * lp

        if site.obs is not None:
            lp = log_density(site.obs)
            if site.obs_integral is not None:  # a traced float observation at an integer site
                lp = jnp.where(site.obs_integral, lp, jnp.nan)
            self.score = self.score + lp
            self.weight = self.weight + lp
            return site.obs
        if addr in self.constraints:
            value = site.check_value(self.constraints[addr], "constraint")
            self.visited.add(addr)
            lp = log_density(value)
            self.weight = self.weight + lp
        else:
            value = self.strategy.value(site, d, self.who)
            lp = log_density(value)
        self.score = self.score + lp
        self.choices[addr] = value
        return value

    def _child(self, strategy, constraints):
        return _TraceHandler(strategy, constraints, self.who)

    def deterministic(self, addr, value, batch):
        value = self.strategy.deterministic(addr, value, batch)
        self._claim(addr)
        self.dets[addr] = value
        return value

    def scan(self, eqn, invals):
        length = eqn.params["length"]
        body_addrs = set(site_addresses(eqn.params["jaxpr"]))
        sliced = {a: v for a, v in self.constraints.items() if a in body_addrs}
        for a, v in sliced.items():
            shape = jnp.shape(v)
            if not shape or shape[0] != length:
                raise ValueError(
                    f"{self.who}: the value for address {fmt_address(a)!r} (a random choice inside "
                    f"lax.scan of length {length}) must have a leading axis of length {length}; "
                    f"got shape {shape}.")
        def body_handler(iteration):  # this iteration's slices of scan_xs and of the constraints
            strategy_x, constraints = iteration
            return self._child(self.strategy.child(strategy_x), constraints)

        xs = self.strategy.scan_xs(length)
        outs, (choices, dets, score, weight) = rescan(eqn, invals, body_handler, (xs, sliced))
        self._merge(choices, dets)
        self.visited |= set(sliced)
        self.score = self.score + jnp.sum(score)
        self.weight = self.weight + jnp.sum(weight)
        return outs

    def cond(self, eqn, invals):
        """The branch taken runs; the trace has the union of the branches' addresses.

        Addresses of the branches not taken hold zeros and add nothing to the score; an
        address in several branches must have the same shape and dtype in each.
        """
        index, ops = invals[0], list(invals[1:])
        x = self.strategy.cond_x()

        def make(b):
            baddrs = set(site_addresses(b))
            cons = {a: v for a, v in self.constraints.items() if a in baddrs}

            def branch(*o):
                h = self._child(self.strategy.child(x), cons)
                return run(b, list(o), h), h.scan_outputs()

            return branch, cons

        made = [make(b) for b in eqn.params["branches"]]
        shapes = [jax.eval_shape(f, *ops)[1] for f, _ in made]
        union: list = [{}, {}]
        for sh in shapes:
            for table, part in zip(union, sh[:2]):
                for a, s in part.items():
                    if a in table and (table[a].shape, table[a].dtype) != (s.shape, s.dtype):
                        raise ValueError(
                            f"{self.who}: address {fmt_address(a)!r} appears in several branches of a "
                            f"lax.cond with different shapes/dtypes ({table[a]} vs {s}); give it one "
                            "shape in every branch or use distinct addresses.")
                    table[a] = s

        def filled(f):
            def g(*o):
                outs, (choices, dets, score, weight) = f(*o)
                full = [{a: part[a] if a in part else jnp.zeros(s.shape, s.dtype) for a, s in table.items()}
                        for part, table in zip((choices, dets), union)]
                return outs, (full[0], full[1], score, weight)
            return g

        outs, (choices, dets, score, weight) = jax.lax.switch(index, [filled(f) for f, _ in made], *ops)
        self._merge(choices, dets)
        for _, cons in made:
            self.visited |= set(cons)
        self.score = self.score + score
        self.weight = self.weight + weight
        return outs

    def _merge(self, choices, dets):
        """Add a sub-computation's (scan body's, cond branch's) choices and records."""
        for table, part in ((self.choices, choices), (self.dets, dets)):
            for a, v in part.items():
                self._claim(a)
                table[a] = v

    def scan_outputs(self):
        return self.choices, self.dets, self.score, self.weight

    def unvisited(self):
        return [a for a in self.constraints if a not in self.visited]

    def trace(self, retval):
        return Trace(ChoiceMap(self.choices), self.score, retval, ChoiceMap(self.dets))


def _traced_run(program, args, strategy: _Strategy, constraints: dict, who: str):
    """The one traced run behind simulate, generate, assess, replay and harvest:
    ``(handler, retval, closed_jaxpr)``."""
    closed, flat, out_tree = _stage(program, args)
    h = _TraceHandler(strategy, constraints, who)
    try:
        out = run(closed, flat, h)
    except _MissingChoice as e:
        raise _mismatch(closed, constraints, who, e.addr) from None
    return h, jax.tree_util.tree_unflatten(out_tree, out), closed


class _MissingChoice(KeyError):
    def __init__(self, addr, message):
        super().__init__(message)
        self.addr = addr


class AddressMismatchError(KeyError):
    """A choice map and a program disagree on addresses (raised by ``assess``).

    ``missing``: addresses the program samples (unobserved) that the choice map does not give;
    ``extra``: addresses in the choice map that the program never visits. Both are sorted
    lists of formatted addresses. Objectives that score a model at a guide's choices re-raise
    it as a model/guide mismatch naming both sides.
    """

    def __init__(self, message, missing=(), extra=()):
        super().__init__(message)
        self.message = message
        self.missing = list(missing)
        self.extra = list(extra)

    def __str__(self):
        return self.message


def _mismatch(closed, cons, who, first_missing=None):
    """The address mismatch between ``cons`` and the staged program, as an AddressMismatchError."""
    missing = {fmt_address(a) for a in latent_addresses(closed) if a not in cons}
    if first_missing is not None:
        missing.add(fmt_address(first_missing))
    known = set(site_addresses(closed))
    extra = {fmt_address(a) for a in cons if a not in known}
    parts = []
    if missing:
        parts.append(f"the program samples {_names(missing)}, which the choice map does not give")
    if extra:
        parts.append(f"the choice map has {_names(extra)}, which the program never visits")
    msg = (f"{who}: " + "; ".join(parts) + ". Supply a value for every sampled address and no "
           "others (check the spelling and the call prefixes: addresses of sub-programs are "
           "prefix/address), or use ppl.generate(program)(key, constraints, *args) to sample the "
           "missing ones.")
    return AddressMismatchError(msg, sorted(missing), sorted(extra))


def _names(names):
    names = sorted(names)
    return ", ".join(repr(n) for n in names)


def harvest(program):
    """``harvest(program)(*args) -> Trace`` inside another program or objective.

    Runs ``program`` with its random choices left in place (so an enclosing interpreter,
    e.g. ADEV, handles them) and returns its trace: the choices, the log density of the
    choices at their values (differentiable in both), and the return value.
    """

    def harvest_fn(*args):
        h, retval, _ = _traced_run(program, args, _Keep(), {}, "harvest")
        return h.trace(retval)

    return harvest_fn


def _check_all_visited(h: _TraceHandler):
    missing = h.unvisited()
    if missing:
        raise KeyError(
            f"{h.who}: the choice map has addresses the program never visits: "
            f"{sorted(fmt_address(a) for a in missing)}. Remove them, or check the spelling and "
            "the call prefixes (addresses of sub-programs are prefix/address).")


def _constraints(choices, who):
    if isinstance(choices, Trace):
        choices = choices.choices
    try:
        cm = ChoiceMap.from_dict(choices)
    except TypeError as e:
        raise TypeError(f"{who}: {e}") from None
    return dict(cm.items())


def simulate(program):
    """``simulate(program)(key, *args) -> Trace``: run the program, sampling every choice."""

    def simulate_fn(key, *args):
        h, retval, _ = _traced_run(program, args, _Draw(key), {}, "simulate")
        return h.trace(retval)

    return simulate_fn


def generate(program):
    """``generate(program)(key, constraints, *args) -> (Trace, log_weight)``.

    Choices at constrained addresses take the given values; the others are sampled from the
    program. ``log_weight`` is the log density of the constrained and observed choices, so
    ``exp(log_weight)`` is an importance weight with the program's prior as proposal.
    """

    def generate_fn(key, constraints, *args):
        cons = _constraints(constraints, "generate")
        h, retval, _ = _traced_run(program, args, _Draw(key), cons, "generate")
        _check_all_visited(h)
        return h.trace(retval), h.weight

    return generate_fn


def importance(model, proposal=None):
    """Importance sampling: ``importance(model, proposal)(key, observations, *args)``.

    Returns ``(trace, log_weight)`` with ``log_weight = log p(x, y) - log q(x)``: ``x`` is
    drawn by simulating ``proposal(*args)`` and ``y`` are the observations. Without a
    proposal the model's own prior proposes (this is :func:`generate`).
    """
    if proposal is None:
        return generate(model)

    def importance_fn(key, observations, *args):
        obs = _constraints(observations, "importance")
        q = simulate(proposal)(key, *args)
        both = dict(q.choices.items())
        clash = set(both) & set(obs)
        if clash:
            raise KeyError(f"importance: addresses both proposed and observed: "
                           f"{sorted(fmt_address(a) for a in clash)}")
        both.update(obs)
        log_p, retval = assess(model)(both, *args)
        trace = Trace(ChoiceMap(both), log_p, retval, q.deterministics)
        return trace, log_p - q.score

    return importance_fn


def assess(program):
    """``assess(program)(choices, *args) -> (log_density, retval)``: no randomness consumed."""

    def assess_fn(choices, *args):
        cons = _constraints(choices, "assess")
        h, retval, closed = _traced_run(program, args, _ScoreOnly(), cons, "assess")
        if h.unvisited():
            raise _mismatch(closed, cons, "assess")
        return h.score, retval

    return assess_fn


def replay(program, trace):
    """``replay(program, trace)(key, *args) -> Trace``: reuse ``trace``'s values where visited."""

    def replay_fn(key, *args):
        cons = _constraints(trace, "replay")
        h, retval, _ = _traced_run(program, args, _Draw(key), cons, "replay")
        return h.trace(retval)

    return replay_fn


# ---------------------------------------------------------------------------------------
# program-to-program: re-emit the staged program with rewritten sites


def rebind_site(site: Site, addr=None, obs=None):
    """Bind ``sample_p`` again for ``site`` in the current trace (optionally rewritten)."""
    observed = obs is not None or site.obs is not None
    params = dict(addr=site.addr if addr is None else addr, treedef=site.treedef, shape=site.shape,
                  dtype=site.dtype, observed=observed, batch=site.batch, estimator=site.estimator,
                  plates=site.plates)
    return bind_site(site.leaves, (site.obs if obs is None else obs) if observed else None, params)


class Reemit(Handler):
    """Re-emits random choices (rewritten by ``rewrite``) so the result is again a program."""

    def __init__(self, prefix=(), constraints=None):
        self.prefix = prefix
        self.constraints = constraints or {}

    def sample(self, site):
        addr = self.prefix + site.addr
        if site.addr in self.constraints:
            value = site.check_value(self.constraints[site.addr], "condition value")
            return rebind_site(site, addr=addr, obs=value)
        return rebind_site(site, addr=addr)

    def deterministic(self, addr, value, batch):
        return det_p.bind(value, addr=self.prefix + addr, batch=batch)

    def scan(self, eqn, invals):
        body_addrs = set(site_addresses(eqn.params["jaxpr"]))
        sliced = {a: v for a, v in self.constraints.items() if a in body_addrs}
        outs, _ = rescan(eqn, invals, lambda c: Reemit(self.prefix, c), sliced)
        return outs

    def cond(self, eqn, invals):
        index, ops = invals[0], invals[1:]
        branches = [lambda *o, b=b: run(b, list(o), self) for b in eqn.params["branches"]]
        return jax.lax.switch(index, branches, *ops)


def call(address, program, *args):
    """Run ``program(*args)`` inside the current program with its addresses under ``address``."""
    prefix = normalize_address(address)
    closed, flat, out_tree = _stage(program, args)
    out = run(closed, flat, Reemit(prefix=prefix))
    return jax.tree_util.tree_unflatten(out_tree, out)


def condition(program, choices):
    """A program in which the given choices are observed (their values fixed and scored)."""
    cons = _constraints(choices, "condition")

    def conditioned(*args):
        closed, flat, out_tree = _stage(program, args)
        all_addrs = set(site_addresses(closed))
        missing = [a for a in cons if a not in all_addrs]
        if missing:
            raise KeyError(
                f"condition: the choice map has addresses the program never visits: "
                f"{sorted(fmt_address(a) for a in missing)}. Remove them or check their spelling.")
        out = run(closed, flat, Reemit(constraints=cons))
        return jax.tree_util.tree_unflatten(out_tree, out)

    return conditioned
