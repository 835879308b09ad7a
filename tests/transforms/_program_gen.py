"""A fuzzer for gradients: random small objective programs with exact expectations.

One description, two interpretations. A :class:`Program` is a list of statements (random
choices, arithmetic, ``lax.cond``, ``lax.scan``) over a parameter vector ``theta`` and a
returned expression. :func:`ppl_program` turns it into a ppl objective program (float32,
each site with its estimator); :func:`exact_value` evaluates its expected value exactly in
float64 by integrating every random choice on a grid:

- finite discrete sites (Bernoulli, Categorical) by enumeration; Poisson and Geometric by
  summing their pmf up to a point where the tail is below 1e-12;
- continuous sites (Normal, Exponential, Gamma, Beta) by Gauss-Legendre quadrature of
  ``f(x) p_theta(x)`` in a variable where the weighted density is smooth (``x`` for the
  Normal, ``x = u^2`` for Exponential and Gamma, ``x = (1 - cos(pi u)) / 2`` for Beta), over
  an interval beyond which the mass is below 1e-12, split at every constant the value
  is compared with, so that each piece is smooth. The interval's ends are held constant
  (``stop_gradient``): the gradient flows through the densities, which is the derivative
  of the integral even where ``f`` jumps.

Every site's value becomes an axis of the grid; the weight of a grid point is the product of
its sites' weights, the expectation the weighted sum of the return value. The exact gradient
is ``jax.grad`` of that sum in float64, independent of every estimator, of ADEV and of
NumPyro's densities (the densities are ``jax.scipy.stats``'s).

:func:`generate` draws a random program from a seed; :func:`check` runs one (the plan, the
estimates, the statistical test of ``tests/_stats.py``); ``python -m
tests.transforms._program_gen -n 200`` runs many and prints the counts.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from jax.scipy import stats as jst

import ppl
from ppl.estimators import ARM, MVD, Baseline, DisARM, Enum, LeaveOneOut, Reparam, ScoreFunction
from ppl.transforms import expectation

from .. import _stats

# --- known bugs (fixed elsewhere): the generator kept away from them while they were True -------------
#: ``lax.cond`` in the continuation of a site whose estimator calls it many times (Enum, MVD,
#: LeaveOneOut, ARM, DisARM), with random choices in the branches or a pathwise operand: reverse
#: mode crashed (``Transpose rule for 'stop_gradient'``), issue #22; fixed in b0dd0c3.
KNOWN_COND_TRANSPOSE_BUG = False
#: MVD's Normal rule drew an infinite value once in ~8 million (issue #21); fixed on main.
KNOWN_MVD_NORMAL_INF = False
#: The plan said "yes" when a pathwise value reached a comparison (issue #13; fixed by the
#: derived verdict, 5aa773b): comparisons of reparameterized values are generated again.
KNOWN_PATHWISE_DISCONTINUITY_VERDICT = False

# --- the description ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Const:
    v: float


@dataclasses.dataclass(frozen=True)
class Theta:
    i: int


@dataclasses.dataclass(frozen=True)
class Var:
    name: str


@dataclasses.dataclass(frozen=True)
class Op:
    """A smooth operation: one of :data:`OPS`."""
    fn: str
    args: tuple


@dataclasses.dataclass(frozen=True)
class Cmp:
    """``1.0 if value(name) > c else 0.0``: a comparison of a site's value with a constant."""
    name: str
    c: float


OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "sin": jnp.sin,
    "tanh": jnp.tanh,
    "sq": lambda a: a * a,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
}


@dataclasses.dataclass(frozen=True)
class Sample:
    """A random choice. ``raw`` are expressions mapped to the family's parameters by :data:`LINKS`."""
    name: str
    family: str
    raw: tuple
    est: Any
    at_site: bool = False   # estimator given at the site (sample(..., estimator=)) instead of the objective's mapping
    shift: tuple = ()       # a vector site: element j has ``raw[0] + shift[j]``; its value is ``Var(f"{name}.{j}")``

    def elements(self):
        """The names of the site's values (one per element)."""
        return [f"{self.name}.{j}" for j in range(len(self.shift))] if self.shift else [self.name]


@dataclasses.dataclass(frozen=True)
class Let:
    name: str
    expr: Any


@dataclasses.dataclass(frozen=True)
class Cond:
    """``name = lax.cond(pred > 0.5, then, else)``; each branch is ``(statements, result)``."""
    name: str
    pred: Any
    then: tuple
    then_out: Any
    orelse: tuple
    orelse_out: Any


@dataclasses.dataclass(frozen=True)
class Scan:
    """``name = lax.scan`` of ``length`` steps: the carry (``Var(name)`` in the body) starts at
    ``init``; each step runs ``body`` and sets the carry to ``update``."""
    name: str
    length: int
    init: Any
    body: tuple
    update: Any


@dataclasses.dataclass(frozen=True)
class Program:
    theta: tuple
    stmts: tuple
    ret: Any


# --- families: parameter links, distributions, exact weights --------------------------------------

def _sig(x):
    return jax.nn.sigmoid(x)


#: family -> (number of raw parameters, raw -> canonical parameters)
LINKS = {
    "Bernoulli": (1, lambda r: {"logits": r[0]}),
    "BernoulliProbs": (1, lambda r: {"probs": 0.05 + 0.9 * _sig(r[0])}),
    "Categorical": (3, lambda r: {"logits": r}),
    "Poisson": (1, lambda r: {"rate": 0.3 + 2.0 * _sig(r[0])}),
    "Geometric": (1, lambda r: {"probs": 0.35 + 0.5 * _sig(r[0])}),
    "Normal": (2, lambda r: {"loc": r[0], "scale": 0.5 + _sig(r[1])}),
    "Exponential": (1, lambda r: {"rate": 0.5 + 1.5 * _sig(r[0])}),
    "Gamma": (2, lambda r: {"concentration": 1.5 + 2.0 * _sig(r[0]), "rate": 0.7 + _sig(r[1])}),
    "Beta": (2, lambda r: {"c1": 1.2 + 2.0 * _sig(r[0]), "c0": 1.2 + 2.0 * _sig(r[1])}),
}
DISCRETE = {"Bernoulli", "BernoulliProbs", "Categorical", "Poisson", "Geometric"}
CONTINUOUS = {"Normal", "Exponential", "Gamma", "Beta"}
#: support sizes used by the exact sums (Poisson rate <= 2.3: P(n >= 30) < 1e-20;
#: Geometric probs >= 0.35: P(n >= 70) < 1e-13)
SUPPORT = {"Bernoulli": 2, "BernoulliProbs": 2, "Categorical": 3, "Poisson": 30, "Geometric": 70}
NQ = 32  # Gauss-Legendre nodes per smooth piece of a continuous site


def make_dist(family, raw):
    p = LINKS[family][1](raw)
    if family == "Bernoulli":
        return nd.Bernoulli(logits=p["logits"])
    if family == "BernoulliProbs":
        return nd.Bernoulli(probs=p["probs"])
    if family == "Categorical":
        return nd.Categorical(logits=p["logits"])
    if family == "Poisson":
        return nd.Poisson(p["rate"])
    if family == "Geometric":
        return nd.Geometric(probs=p["probs"])
    if family == "Normal":
        return nd.Normal(p["loc"], p["scale"])
    if family == "Exponential":
        return nd.Exponential(p["rate"])
    if family == "Gamma":
        return nd.Gamma(p["concentration"], p["rate"])
    if family == "Beta":
        return nd.Beta(p["c1"], p["c0"])
    raise ValueError(family)


def _pmf(family, p, v):
    """Exact pmf (float64) at support values ``v`` (broadcasting against the parameters)."""
    if family == "Bernoulli":
        q = _sig(p["logits"])
        return jnp.where(v == 1, q, 1 - q)
    if family == "BernoulliProbs":
        return jnp.where(v == 1, p["probs"], 1 - p["probs"])
    if family == "Poisson":
        return jnp.exp(jst.poisson.logpmf(v, p["rate"]))
    if family == "Geometric":  # failures before the first success
        return p["probs"] * (1 - p["probs"]) ** v
    raise ValueError(family)


# continuous families: u -> x, log |dx/du|, the interval in u (held constant), the density
def _cont_parts(family, p):
    if family == "Normal":
        loc, s = jax.lax.stop_gradient(p["loc"]), jax.lax.stop_gradient(p["scale"])
        return (lambda u: u, lambda u: jnp.zeros_like(u), loc - 8.5 * s, loc + 8.5 * s,
                lambda x: jst.norm.logpdf(x, p["loc"], p["scale"]), lambda x: x)
    if family in ("Exponential", "Gamma"):  # x = u^2: the density in u is smooth at 0 (u^(2a-1), a >= 1)
        a = p["concentration"] if family == "Gamma" else 1.0
        r = jax.lax.stop_gradient(p["rate"])
        a0 = jax.lax.stop_gradient(a)
        if family == "Gamma":
            logpdf = lambda x: jst.gamma.logpdf(x, p["concentration"], scale=1 / p["rate"])  # noqa: E731
        else:
            logpdf = lambda x: jnp.log(p["rate"]) - p["rate"] * x  # noqa: E731
        return (lambda u: u * u, lambda u: jnp.log(2 * u), 1e-12, jnp.sqrt((a0 + 10 * jnp.sqrt(a0) + 30) / r),
                logpdf, jnp.sqrt)
    if family == "Beta":  # x = (1 - cos(pi u)) / 2: smooth at both ends for concentrations >= 1
        return (lambda u: (1 - jnp.cos(jnp.pi * u)) / 2, lambda u: jnp.log(jnp.pi / 2 * jnp.sin(jnp.pi * u)),
                1e-12, 1 - 1e-12, lambda x: jst.beta.logpdf(x, p["c1"], p["c0"]),
                lambda x: jnp.arccos(1 - 2 * x) / jnp.pi)
    raise ValueError(family)


_GL = np.polynomial.legendre.leggauss(NQ)


# --- evaluation shared by both interpretations ------------------------------------------------------

def eval_expr(e, env, theta):
    if isinstance(e, Const):
        return e.v
    if isinstance(e, Theta):
        return theta[e.i]
    if isinstance(e, Var):
        return env[e.name]
    if isinstance(e, Op):
        return OPS[e.fn](*[eval_expr(a, env, theta) for a in e.args])
    if isinstance(e, Cmp):
        return jnp.where(env[e.name] > e.c, 1.0, 0.0)
    raise TypeError(e)


# --- the ppl program -------------------------------------------------------------------------------

def estimators_of(prog):
    """The objective's mapping ``{address: estimator}`` (sites whose estimator is not at the site)."""
    out = {}
    for s in _walk(prog.stmts):
        if isinstance(s, Sample) and not s.at_site:
            out[s.name] = s.est
    return out


def _walk(stmts):
    for s in stmts:
        yield s
        if isinstance(s, Cond):
            yield from _walk(s.then)
            yield from _walk(s.orelse)
        elif isinstance(s, Scan):
            yield from _walk(s.body)


def ppl_program(prog):
    """The objective program ``f(theta)`` (float32) described by ``prog``."""
    def run(stmts, env, theta):
        f32 = theta.dtype
        for s in stmts:
            if isinstance(s, Sample):
                raw = [jnp.asarray(eval_expr(r, env, theta), f32) for r in s.raw]
                if s.shift:
                    raw[0] = raw[0] + jnp.asarray(s.shift, f32)
                    raw = jnp.broadcast_arrays(*raw)
                d = make_dist(s.family, jnp.stack(raw, -1) if s.family == "Categorical" else raw)
                x = jnp.asarray(ppl.sample(s.name, d, estimator=s.est if s.at_site else None), f32)
                for j, n in enumerate(s.elements()):
                    env[n] = x[j] if s.shift else x
            elif isinstance(s, Let):
                env[s.name] = jnp.asarray(eval_expr(s.expr, env, theta), f32)
            elif isinstance(s, Cond):
                def branch(stmts_, out):
                    def fn():
                        env2 = dict(env)
                        run(stmts_, env2, theta)
                        return jnp.asarray(eval_expr(out, env2, theta), f32)
                    return fn
                pred = jnp.asarray(eval_expr(s.pred, env, theta)) > 0.5
                env[s.name] = jax.lax.cond(pred, branch(s.then, s.then_out), branch(s.orelse, s.orelse_out))
            elif isinstance(s, Scan):
                def body(c, _, s=s):
                    env2 = dict(env)
                    env2[s.name] = c
                    run(s.body, env2, theta)
                    return jnp.asarray(eval_expr(s.update, env2, theta), f32), None
                init = jnp.asarray(eval_expr(s.init, env, theta), f32)
                env[s.name], _ = jax.lax.scan(body, init, None, length=s.length)
            else:
                raise TypeError(s)
        return env

    def objective(theta):
        env = run(prog.stmts, {}, theta)
        return jnp.asarray(eval_expr(prog.ret, env, theta), theta.dtype)

    return objective


def expectation_of(prog):
    return expectation(ppl_program(prog), estimators=estimators_of(prog))


# --- the exact expectation --------------------------------------------------------------------------

class _Grid:
    """Every site value is an axis; ``env`` arrays and the weight ``w`` span all axes so far."""

    def __init__(self):
        self.env, self.w, self.ndim = {}, jnp.ones(()), 0

    def full(self, x):
        x = jnp.asarray(x, jnp.float64)
        return x.reshape((1,) * (self.ndim - x.ndim) + x.shape)

    def add_axis(self, values, weights, name):
        self.env = {k: v[..., None] for k, v in self.env.items()}
        self.w = self.w[..., None] * weights
        self.env[name] = values
        self.ndim += 1


def _breakpoints(stmts, out, name):
    """Constants the value of site ``name`` is compared with anywhere in the program."""
    found = set()

    def visit(e):
        if isinstance(e, Cmp) and e.name == name:
            found.add(e.c)
        elif isinstance(e, Op):
            for a in e.args:
                visit(a)
        elif isinstance(e, (list, tuple)):
            for a in e:
                visit(a)
        elif dataclasses.is_dataclass(e) and not isinstance(e, (Const, Theta, Var)):
            for f in dataclasses.fields(e):
                visit(getattr(e, f.name))
    visit(stmts)
    visit(out)
    return sorted(found)


def _exact_site(grid, s, theta, name, shift, breaks):
    raw = [grid.full(eval_expr(r, grid.env, theta)) for r in s.raw]
    raw[0] = raw[0] + shift
    raw = [r[..., None] for r in raw]                       # the new axis
    p = LINKS[s.family][1](jnp.stack(jnp.broadcast_arrays(*raw), -1) if s.family == "Categorical" else raw)
    if s.family == "Categorical":
        v = jnp.arange(3.0)
        probs = jax.nn.softmax(p["logits"], -1)            # (..., 1, 3)
        w = probs[..., 0, :]
    elif s.family in DISCRETE:
        v = jnp.arange(float(SUPPORT[s.family]))
        w = _pmf(s.family, p, v)
    else:
        to_x, logjac, lo, hi, logpdf, to_u = _cont_parts(s.family, p)
        lo, hi = jnp.broadcast_arrays(lo, hi)
        cuts = [lo] + [jnp.clip(to_u(jnp.asarray(b, jnp.float64)), lo, hi) for b in breaks] + [hi]
        t, g = (jnp.asarray(a, jnp.float64) for a in _GL)
        us, ws = [], []
        for a, b in zip(cuts[:-1], cuts[1:]):
            us.append((a + b) / 2 + (b - a) / 2 * t)
            ws.append((b - a) / 2 * g)
        u, wq = jnp.concatenate(us, -1), jnp.concatenate(ws, -1)
        v = to_x(u)
        w = wq * jnp.exp(logpdf(v) + logjac(u))
    grid.add_axis(v.reshape((1,) * (grid.ndim + 1 - v.ndim) + v.shape), w, name)


def exact_value(prog, theta):
    """``E[prog(theta)]`` in float64 (call under ``jax.enable_x64``; differentiable in ``theta``)."""
    grid = _Grid()
    everything = (prog.stmts, prog.ret)

    def run(stmts):
        for s in stmts:
            if isinstance(s, Sample):
                for n, sh in zip(s.elements(), s.shift or (0.0,)):   # elements are independent
                    _exact_site(grid, s, theta, n, sh, _breakpoints(*everything, n))
            elif isinstance(s, Let):
                grid.env[s.name] = grid.full(eval_expr(s.expr, grid.env, theta))
            elif isinstance(s, Cond):
                # both branches are integrated (the one not taken integrates to 1); temporaries
                # live in the grid's env so that later axes extend them
                grid.env[("pred", s.name)] = grid.full(eval_expr(s.pred, grid.env, theta))
                run(s.then)
                grid.env[("then", s.name)] = grid.full(eval_expr(s.then_out, grid.env, theta))
                run(s.orelse)
                b = grid.full(eval_expr(s.orelse_out, grid.env, theta))
                pred, a = grid.env.pop(("pred", s.name)), grid.env.pop(("then", s.name))
                grid.env[s.name] = jnp.where(pred > 0.5, a, b)
            elif isinstance(s, Scan):
                c = grid.full(eval_expr(s.init, grid.env, theta))
                for _ in range(s.length):
                    grid.env[s.name] = c
                    run(s.body)
                    c = grid.full(eval_expr(s.update, grid.env, theta))
                grid.env[s.name] = c
            else:
                raise TypeError(s)

    run(prog.stmts)
    f = grid.full(eval_expr(prog.ret, grid.env, theta))
    return jnp.sum(grid.w * f)


def grid_size(prog):
    """How many grid points the exact evaluation visits."""
    def size(stmts):
        n = 1
        for s in stmts:
            if isinstance(s, Sample):
                for e in s.elements():
                    n *= SUPPORT.get(s.family, NQ * (1 + len(_breakpoints(prog.stmts, prog.ret, e))))
            elif isinstance(s, Cond):
                n *= size(s.then) * size(s.orelse)
            elif isinstance(s, Scan):
                n *= size(s.body) ** s.length
        return n
    return size(prog.stmts)


def exact(prog):
    """``(value, gradient)`` of the expectation at ``prog.theta``, float64 numpy."""
    with jax.enable_x64(True):
        th = jnp.asarray(prog.theta, jnp.float64)
        v, g = jax.jit(jax.value_and_grad(lambda t: exact_value(prog, t)))(th)
        return np.asarray(v), np.asarray(g)


# --- the generator -------------------------------------------------------------------------------------

MULTI_CALL = (Enum, MVD, LeaveOneOut, ARM, DisARM)
MAX_GRID = 400_000   # grid points of the exact evaluation
MAX_SITES = 5        # random choices, scans unrolled
MAX_TRACES = 4       # see trace_cost


def _inner(est):
    while isinstance(est, Baseline):
        est = est.inner
    return est


def is_pathwise_estimator(est):
    """Whether the site's value carries a tangent into the rest of the program."""
    return isinstance(_inner(est), Reparam)


def _estimators_for(family, rng, opts):
    """A random valid estimator for ``family`` (see estimators/README.md's table)."""
    def bs():
        return int(rng.choice([1, 2, 2, 3]))

    def base(inner):
        return Baseline(inner, float(np.round(rng.uniform(-1.0, 2.0), 2)))

    choices = [lambda: ScoreFunction(), lambda: base(ScoreFunction()),
               lambda: LeaveOneOut(int(rng.integers(2, 5)), batch_size=bs())]
    if family in ("Bernoulli", "BernoulliProbs", "Categorical"):
        choices += [lambda: Enum(batch_size=bs())] * 2 + [lambda: base(Enum())]
    if family in ("Bernoulli", "BernoulliProbs", "Categorical", "Poisson", "Geometric", "Exponential") or (
            family == "Normal" and opts["mvd_normal"]):
        choices += [lambda: MVD(batch_size=bs())] * 2
    if family in ("Bernoulli", "BernoulliProbs"):
        choices += [lambda: ARM(batch_size=bs()), lambda: DisARM(batch_size=bs())]
    if family in CONTINUOUS:
        choices += [lambda: Reparam()] * 3 + [lambda: base(Reparam())]
    return choices[int(rng.integers(len(choices)))]()


class _Gen:
    """Draws one program. Scopes track each visible value: whether it carries a pathwise
    tangent, whether it is a site's value (comparisons are made with sites' values only, so
    the exact evaluator knows where the integrand jumps), and its family."""

    def __init__(self, rng, opts):
        self.rng, self.opts = rng, opts
        self.dim = int(rng.integers(2, 5))
        th = rng.uniform(0.15, 1.2, self.dim) * rng.choice([-1.0, 1.0], self.dim)
        self.theta = tuple(float(np.round(t, 3)) for t in th)
        self.count = 0
        self.multi_call_before = False   # a site with a many-call estimator precedes this point

    def name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def c(self, lo, hi):
        return Const(float(np.round(self.rng.uniform(lo, hi), 2)))

    def squash(self, v, info):
        """A bounded, smooth function of a visible value."""
        r = self.rng.integers(3)
        if info["family"] in ("Bernoulli", "BernoulliProbs", "Categorical") and r == 0:
            return Var(v)
        return Op(["tanh", "sin", "tanh"][r], (Op("mul", (self.c(0.3, 0.9), Var(v))),))

    def pathwise(self, e, scope):
        if isinstance(e, Theta):
            return True
        if isinstance(e, Var):
            return scope[e.name]["pathwise"]
        if isinstance(e, Op):
            return any(self.pathwise(a, scope) for a in e.args)
        return False   # Const, Cmp (a step in a site's value: its tangent is zero)

    def linear(self, scope, allow_theta=True, allowed=None):
        """``c0 + c1 theta_i + c2 h(value)`` (some terms dropped)."""
        rng = self.rng
        terms = [self.c(-0.8, 0.8)]
        if allow_theta and rng.random() < 0.85:
            terms.append(Op("mul", (self.c(0.5, 1.5), Theta(int(rng.integers(self.dim))))))
        names = [n for n in scope if allowed is None or allowed(n)]
        if names and rng.random() < 0.7:
            v = names[int(rng.integers(len(names)))]
            terms.append(Op("mul", (self.c(-1.2, 1.2), self.squash(v, scope[v]))))
        e = terms[0]
        for t in terms[1:]:
            e = Op("add", (e, t))
        return e

    def cmp(self, scope, pathwise_ok):
        """A comparison of a site's value with a constant, or None if no site qualifies."""
        names = [n for n, i in scope.items() if i["site"] and (pathwise_ok or not i["pathwise"])]
        if not names:
            return None
        n = names[int(self.rng.integers(len(names)))]
        fam = scope[n]["family"]
        if fam in ("Bernoulli", "BernoulliProbs"):
            c = 0.5
        elif fam == "Categorical":
            c = float(self.rng.choice([0.5, 1.5]))
        elif fam in ("Poisson", "Geometric"):
            c = float(self.rng.choice([0.5, 1.5, 2.5]))
        elif fam == "Normal":
            c = float(np.round(self.rng.uniform(-1.0, 1.0), 2))
        elif fam == "Beta":
            c = float(np.round(self.rng.uniform(0.3, 0.7), 2))
        else:
            c = float(np.round(self.rng.uniform(0.3, 2.0), 2))
        return Cmp(n, c)

    def site(self, scope, families=None, vector=True):
        rng = self.rng
        fams = families or sorted(LINKS)
        fam = fams[int(rng.integers(len(fams)))]
        est = _estimators_for(fam, rng, self.opts)
        raw = tuple(self.linear(scope) for _ in range(LINKS[fam][0]))
        name = self.name("x")
        shift = ()
        if vector and rng.random() < 0.25:   # two elements at one address
            shift = (0.0, float(np.round(rng.uniform(-1.0, 1.0), 2)))
        s = Sample(name, fam, raw, est, at_site=bool(rng.random() < 0.3), shift=shift)
        if isinstance(_inner(est), MULTI_CALL):
            self.multi_call_before = True
        info = {"pathwise": is_pathwise_estimator(est), "site": True, "family": fam}
        return s, {n: dict(info) for n in s.elements()}

    def statements(self, n_sites, scope, depth=0):
        """Statements holding ``n_sites`` random choices, in ``scope`` (updated)."""
        rng, out = self.rng, []
        while n_sites > 0:
            r = rng.random()
            if r < 0.15 and scope:
                e = self.linear(scope)
                step = self.cmp(scope, self.opts["pathwise_cmp"])
                if step is not None and rng.random() < 0.5:
                    e = Op("add", (e, Op("mul", (self.c(-1.0, 1.0), step))))
                name = self.name("v")
                out.append(Let(name, e))
                scope[name] = {"pathwise": self.pathwise(e, scope), "site": False, "family": None}
            elif r < 0.35 and depth == 0 and scope:
                s = self.cond(scope, n_sites)
                if s is None:
                    continue
                stmt, used = s
                out.append(stmt)
                n_sites -= used
            elif r < 0.5 and depth == 0:
                stmt, used = self.scan(scope, n_sites)
                out.append(stmt)
                n_sites -= used
            else:
                s, info = self.site(scope)
                out.append(s)
                scope.update(info)
                n_sites -= max(1, len(s.shift))
        return out

    def cond(self, scope, budget):
        rng = self.rng
        pred = self.cmp(scope, self.opts["pathwise_cmp"])
        if pred is None:
            return None
        # the known crash: no random choices in the branches and no tangent into them after a
        # site whose estimator calls its continuation many times
        restricted = self.opts["cond_bug"] and self.multi_call_before
        used, branches = 0, []
        for _ in range(2):
            bscope = dict(scope)
            stmts = []
            if not restricted and used < budget and rng.random() < 0.5:
                stmts = self.statements(1, bscope, depth=1)
                used += 1
            if restricted:
                ok = [n for n in bscope if not bscope[n]["pathwise"]]
                e = self.linear(bscope, allow_theta=False, allowed=lambda n: n in ok)
            else:
                e = self.linear(bscope)
                if stmts and isinstance(stmts[-1], Sample):  # use the branch's own random choice
                    last = stmts[-1].elements()[-1]
                    e = Op("add", (e, self.squash(last, bscope[last])))
            branches.append((tuple(stmts), e, self.pathwise(e, bscope)))
        name = self.name("c")
        scope[name] = {"pathwise": branches[0][2] or branches[1][2], "site": False, "family": None}
        return Cond(name, pred, branches[0][0], branches[0][1], branches[1][0], branches[1][1]), used

    def scan(self, scope, budget):
        rng = self.rng
        length = int(rng.integers(2, 4))
        name = self.name("s")
        init = self.linear(scope)
        bscope = dict(scope)
        bscope[name] = {"pathwise": True, "site": False, "family": None}
        body, used = [], 0
        if rng.random() < 0.7:
            fams = ["Bernoulli", "BernoulliProbs", "Categorical"] + (["Normal", "Exponential"] if length == 2 else [])
            s, info = self.site(bscope, fams, vector=False)
            # the site's parameters follow the carry
            s = dataclasses.replace(s, raw=(Op("add", (s.raw[0], Op("mul", (self.c(0.3, 0.8), Op("tanh", (Var(name),)))))),)
                                    + s.raw[1:])
            bscope.update(info)
            body, used = [s], length
        update = Op("add", (Op("mul", (self.c(0.3, 0.9), Op("tanh", (Var(name),)))), self.linear(bscope)))
        if body:
            update = Op("add", (update, self.squash(body[0].name, bscope[body[0].name])))
        step = self.cmp(bscope, self.opts["pathwise_cmp"])
        if step is not None and rng.random() < 0.3:
            update = Op("add", (update, Op("mul", (self.c(-0.7, 0.7), step))))
        scope[name] = {"pathwise": self.pathwise(init, scope) or self.pathwise(update, bscope), "site": False,
                       "family": None}
        return Scan(name, length, init, tuple(body), update), used

    def ret(self, scope):
        rng = self.rng
        names = list(scope)
        terms = []
        for n in names:   # every visible value enters the result (most of them)
            if rng.random() < 0.85:
                t = Op("mul", (self.c(-1.5, 1.5), self.squash(n, scope[n])))
                if rng.random() < 0.3:
                    t = Op("mul", (t, Theta(int(rng.integers(self.dim)))))
                terms.append(t)
        if len(names) >= 2 and rng.random() < 0.5:
            a, b = rng.choice(len(names), 2, replace=False)
            terms.append(Op("mul", (self.squash(names[a], scope[names[a]]), self.squash(names[b], scope[names[b]]))))
        if not terms:
            terms.append(Var(names[-1]))
        e = terms[0]
        for t in terms[1:]:
            e = Op("add", (e, t))
        return e


def default_options():
    """Generator options: which known bugs to keep away from (see the flags at the top)."""
    return {"cond_bug": KNOWN_COND_TRANSPOSE_BUG, "mvd_normal": not KNOWN_MVD_NORMAL_INF,
            "pathwise_cmp": not KNOWN_PATHWISE_DISCONTINUITY_VERDICT}


def generate(seed, opts=None):
    """A random program (2-5 random choices) from ``seed``; the same seed gives the same program."""
    opts = {**default_options(), **(opts or {})}
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        g = _Gen(rng, opts)
        scope = {}
        stmts = g.statements(int(rng.integers(2, 6)), scope)
        prog = Program(g.theta, tuple(stmts), g.ret(scope))
        if grid_size(prog) <= MAX_GRID and n_choices(prog) <= MAX_SITES and trace_cost(prog) <= MAX_TRACES:
            return prog
    raise RuntimeError(f"no program within the grid budget for seed {seed}")


def _calls(s):
    """How many continuation calls the estimator of site ``s`` makes, and how many times it
    traces the continuation (``lax.map`` with a batch size that does not divide the number of
    calls traces the remainder separately; MVD's sampling families trace the primal call too)."""
    e, fam = _inner(s.est), s.family
    k, m = SUPPORT.get(fam, 0), max(1, len(s.shift))
    if isinstance(e, Enum):
        n = k ** m
    elif isinstance(e, MVD):
        n = {"Bernoulli": 1 + m, "BernoulliProbs": 1 + m, "Categorical": 1 + 2 * m, "Normal": 4 * m}.get(fam, 2 * m)
    elif isinstance(e, LeaveOneOut):
        n = e.num_samples
    elif isinstance(e, (ARM, DisARM)):
        n = 2
    else:
        return 1, 1
    b = e.batch_size
    traces = 1 if b == 1 or b >= n or n % b == 0 else 2
    if isinstance(e, MVD) and fam not in ("Bernoulli", "BernoulliProbs", "Categorical"):
        traces += 1
    return n, traces


def unrolled_sites(prog):
    """The sites in program order with scans unrolled (both branches of a cond)."""
    def go(stmts):
        for s in stmts:
            if isinstance(s, Sample):
                yield s
            elif isinstance(s, Cond):
                yield from go(s.then)
                yield from go(s.orelse)
            elif isinstance(s, Scan):
                for _ in range(s.length):
                    yield from go(s.body)
    return list(go(prog.stmts))


def n_choices(prog):
    """Random choices (elements of vector sites counted one by one, scans unrolled)."""
    return sum(max(1, len(s.shift)) for s in unrolled_sites(prog))


def trace_cost(prog):
    """How many copies of the last site's continuation ADEV traces: the product of every site's
    trace count (nested continuations multiply). It bounds compile time, not correctness."""
    return math.prod(_calls(s)[1] for s in unrolled_sites(prog))


def sites_of(prog):
    return [s for s in _walk(prog.stmts) if isinstance(s, Sample)]


# --- one check -------------------------------------------------------------------------------------------

def verdict(plan):
    """``"yes"`` (every row proven), ``"unverified"`` or ``"no"`` (a biased estimator)."""
    if plan.unbiased:
        return "yes"
    text = str(plan)
    return "unverified" if "unverified" in text else "no"


def check(prog, *, chunk=4000, max_chunks=8, seed=0, z=_stats.Z):
    """Run one program: its plan, then (if the plan says "yes") estimates of the value and the
    gradient in chunks of ``chunk`` keys until the power guard holds (at most ``max_chunks``),
    against the exact ones. Returns a dict with ``status`` in {"pass", "fail", "low power",
    "unverified", "biased", "crash", "nonfinite"}."""
    theta = jnp.asarray(prog.theta, jnp.float32)
    res = {"sites": n_choices(prog), "grid": grid_size(prog), "times": {}}
    t0 = time.perf_counter()
    E = expectation_of(prog)
    try:
        plan = E.plan(theta)
    except Exception as e:  # noqa: BLE001 - a refusal of a valid program is a finding
        return {**res, "status": "crash", "verdict": None, "error": f"plan: {type(e).__name__}: {e}"}
    res["verdict"] = verdict(plan)
    res["times"]["plan"] = time.perf_counter() - t0
    if res["verdict"] != "yes":
        return {**res, "status": "unverified" if res["verdict"] == "unverified" else "biased"}
    t0 = time.perf_counter()
    ex_v, ex_g = exact(prog)
    res["times"]["exact"] = time.perf_counter() - t0
    exact_all = np.concatenate([[ex_v], ex_g])
    res["exact"] = exact_all
    fn = jax.jit(jax.vmap(lambda k: jnp.concatenate([jnp.atleast_1d(a) for a in E.value_and_grad(k, theta)])))
    limit = _stats.power_limit(exact_all)
    samples = []
    try:
        for i in range(max_chunks):
            keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), i), chunk)
            t0 = time.perf_counter()
            samples.append(np.asarray(fn(keys), np.float64))
            res["times"][f"chunk{i}"] = time.perf_counter() - t0
            s = np.concatenate(samples)
            if not np.all(np.isfinite(s)):
                bad = np.unique(np.nonzero(~np.isfinite(s))[1])
                return {**res, "status": "nonfinite", "n": s.shape[0], "error": f"non-finite estimates in components {bad}"}
            mean, se = _stats.mean_se(s)
            if np.all(se <= limit):
                break
    except Exception as e:  # noqa: BLE001
        return {**res, "status": "crash", "error": f"estimate: {type(e).__name__}: {str(e)[:300]}"}
    ok = _stats.within(s, exact_all, z)
    res.update(n=s.shape[0], mean=mean, se=se, z=z)
    if not np.all(se <= limit):
        return {**res, "status": "low power" if np.all(ok) else "fail"}
    return {**res, "status": "pass" if np.all(ok) else "fail"}




def describe(prog):
    """The program as Python-like text."""
    def ex(e):
        if isinstance(e, Const):
            return repr(e.v)
        if isinstance(e, Theta):
            return f"t[{e.i}]"
        if isinstance(e, Var):
            return e.name
        if isinstance(e, Cmp):
            return f"({e.name} > {e.c})"
        if e.fn in ("add", "sub", "mul"):
            return f"({ex(e.args[0])} {dict(add='+', sub='-', mul='*')[e.fn]} {ex(e.args[1])})"
        return f"{e.fn}({', '.join(ex(a) for a in e.args)})"

    def st(stmts, ind):
        lines = []
        for s in stmts:
            p = " " * ind
            if isinstance(s, Sample):
                where = "at site" if s.at_site else "mapped"
                lines.append(f"{p}{s.name} = sample({s.family}({', '.join(ex(r) for r in s.raw)}))  # {s.est} ({where})")
            elif isinstance(s, Let):
                lines.append(f"{p}{s.name} = {ex(s.expr)}")
            elif isinstance(s, Cond):
                lines.append(f"{p}{s.name} = cond({ex(s.pred)}):")
                lines += st(s.then, ind + 4) + [f"{p}    -> {ex(s.then_out)}", f"{p}  else:"]
                lines += st(s.orelse, ind + 4) + [f"{p}    -> {ex(s.orelse_out)}"]
            elif isinstance(s, Scan):
                lines.append(f"{p}{s.name} = scan({s.length} steps, init {ex(s.init)}):")
                lines += st(s.body, ind + 4) + [f"{p}    {s.name} <- {ex(s.update)}"]
        return lines

    return "\n".join([f"t = {list(prog.theta)}"] + st(prog.stmts, 0) + [f"return {ex(prog.ret)}"])


def run_batch(seeds, *, z=None, chunk=4000, max_chunks=8, opts=None, verbose=False, out=sys.stdout):
    """Check the programs of ``seeds``; returns ``(counts, results)``."""
    seeds = list(seeds)
    z = z if z is not None else _stats.z_for(max(1, 5 * len(seeds)))
    counts, results = {}, []
    for sd in seeds:
        prog = generate(sd, opts)
        t0 = time.perf_counter()
        r = check(prog, chunk=chunk, max_chunks=max_chunks, seed=sd, z=z)
        r["seed"], r["time"] = sd, time.perf_counter() - t0
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        counts[f"verdict {r['verdict']}"] = counts.get(f"verdict {r['verdict']}", 0) + 1
        results.append((prog, r))
        if verbose or r["status"] in ("fail", "crash", "nonfinite"):
            times = ", ".join(f"{k} {v:.1f}" for k, v in r["times"].items())
            print(f"seed {sd}: {r['status']} ({r['time']:.1f} s: {times}; {r['sites']} random choices)", file=out)
            if r["status"] in ("fail", "crash", "nonfinite", "low power"):
                print(describe(prog), file=out)
                for k in ("mean", "se", "exact", "error"):
                    if k in r:
                        print(f"  {k}: {r[k]}", file=out)
            out.flush()
    return counts, results


def main(argv=None):
    ap = argparse.ArgumentParser(description="Gradient fuzzer: random objective programs against exact gradients.")
    ap.add_argument("-n", type=int, default=50, help="number of programs")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--chunk", type=int, default=4000)
    ap.add_argument("--max-chunks", type=int, default=8)
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    counts, results = run_batch(range(a.start, a.start + a.n), chunk=a.chunk, max_chunks=a.max_chunks, verbose=a.verbose)
    sites = sum(r["sites"] for _, r in results)
    print(f"{a.n} programs ({sites} random choices), seeds {a.start}..{a.start + a.n - 1}, "
          f"{time.perf_counter() - t0:.0f} s")
    for k in sorted(counts):
        print(f"  {k}: {counts[k]}")
    return 0 if not any(counts.get(k) for k in ("fail", "crash", "nonfinite")) else 1


if __name__ == "__main__":
    sys.exit(main())
