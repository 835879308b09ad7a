"""A fuzzer for gradients: random objective programs against exact expectations.

``_program_gen.py`` draws small programs (2-5 random choices of Bernoulli, Categorical,
Poisson, Geometric, Normal, Exponential, Gamma, Beta; parameters that depend on earlier
values; arithmetic, comparisons, ``lax.cond``, ``lax.scan``), each random choice with a random
valid estimator, and computes their expected value and its gradient exactly in float64
(enumeration, truncated sums, Gauss-Legendre quadrature; ``jax.grad`` of that). For every
program whose plan says "yes" the estimates must be unbiased (``tests/_stats.py``:
Z standard errors, power guard); "unverified" programs are counted, nothing is asserted.

- The default suite checks a fixed handful of programs (``DEFAULT_SEEDS``; their
  ``1 + dim(theta)`` components count against ``_stats.N_CHECKS``), the exact evaluator
  against closed forms, and a planted bias that the check must catch.
- ``-m slow`` checks ``SLOW_N`` programs with a Bonferroni z for that many checks and
  reports the counts. From the command line:
  ``.venv/bin/python -m tests.transforms._program_gen -n 200 --start 1000`` prints them.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import ndtr

from ppl.estimators import Estimator, estimator_dataclass

from .. import _stats
from . import _program_gen as G
from ._program_gen import Cmp, Const, Op, Program, Sample, Theta, Var

pytestmark = pytest.mark.statistical

DEFAULT_SEEDS = (4, 7, 12, 13)
SLOW_START, SLOW_N = 1000, 150


# --- the exact evaluator is right -------------------------------------------------------------------

def _sig(x):
    return jax.nn.sigmoid(x)


_TH = (0.3, -0.4)
_X = Var("x")


def _one(family, raw, ret):
    return Program(_TH, (Sample("x", family, raw, None),), ret)


CLOSED_FORMS = {
    # E[x^2] = loc^2 + scale^2
    "normal-square": (_one("Normal", (Theta(0), Theta(1)), Op("sq", (_X,))),
                      lambda t: t[0] ** 2 + (0.5 + _sig(t[1])) ** 2),
    # P(x > 0.7): a jump in the integrand, split at 0.7
    "normal-step": (_one("Normal", (Theta(0), Theta(1)), Cmp("x", 0.7)),
                    lambda t: 1 - ndtr((0.7 - t[0]) / (0.5 + _sig(t[1])))),
    "normal-sin": (_one("Normal", (Theta(0), Theta(1)), Op("sin", (_X,))),
                   lambda t: jnp.sin(t[0]) * jnp.exp(-(0.5 + _sig(t[1])) ** 2 / 2)),
    # E[x] + P(x > 1) for the Exponential
    "exponential": (_one("Exponential", (Theta(0),), Op("add", (_X, Cmp("x", 1.0)))),
                    lambda t: 1 / (0.5 + 1.5 * _sig(t[0])) + jnp.exp(-(0.5 + 1.5 * _sig(t[0])))),
    "gamma-mean": (_one("Gamma", (Theta(0), Theta(1)), _X),
                   lambda t: (1.5 + 2 * _sig(t[0])) / (0.7 + _sig(t[1]))),
    "beta-square": (_one("Beta", (Theta(0), Theta(1)), Op("sq", (_X,))),
                    lambda t: (lambda a, b: a * (a + 1) / ((a + b) * (a + b + 1)))(1.2 + 2 * _sig(t[0]),
                                                                                 1.2 + 2 * _sig(t[1]))),
    "poisson-square": (_one("Poisson", (Theta(0),), Op("sq", (_X,))),
                       lambda t: (lambda r: r + r * r)(0.3 + 2 * _sig(t[0]))),
    "geometric-mean": (_one("Geometric", (Theta(0),), _X),
                       lambda t: (lambda p: (1 - p) / p)(0.35 + 0.5 * _sig(t[0]))),
    "categorical-mean": (_one("Categorical", (Theta(0), Theta(1), Const(0.2)), _X),
                         lambda t: jax.nn.softmax(jnp.stack([t[0], t[1], jnp.asarray(0.2)])) @ jnp.arange(3.0)),
    # a vector site: two independent elements, the second's logit shifted by 0.5
    "vector-bernoulli": (Program(_TH, (Sample("x", "Bernoulli", (Theta(0),), None, shift=(0.0, 0.5)),),
                                 Op("mul", (Var("x.0"), Var("x.1")))),
                         lambda t: _sig(t[0]) * _sig(t[0] + 0.5)),
    # dependent sites: z ~ Bernoulli(sigmoid t0), x ~ Normal(t1 + z, 1): E[x^2]
    "bernoulli-then-normal": (
        Program(_TH, (Sample("z", "Bernoulli", (Theta(0),), None),
                      Sample("x", "Normal", (Op("add", (Theta(1), Var("z"))), Const(0.0)), None)),
                Op("sq", (_X,))),
        lambda t: _sig(t[0]) * ((t[1] + 1) ** 2 + (0.5 + _sig(0.0)) ** 2)
        + (1 - _sig(t[0])) * (t[1] ** 2 + (0.5 + _sig(0.0)) ** 2)),
}


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_exact_evaluator_matches_closed_forms(name):
    prog, f = CLOSED_FORMS[name]
    v, g = G.exact(prog)
    with jax.enable_x64(True):
        t = jnp.asarray(prog.theta, jnp.float64)
        rv, rg = np.asarray(f(t)), np.asarray(jax.grad(f)(t))
    np.testing.assert_allclose(v, rv, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(g, rg, rtol=1e-6, atol=1e-7)


def test_exact_evaluator_cond_and_scan_by_hand():
    """A cond on a Bernoulli with a random choice in one branch, and a two-step scan, against
    sums written out by hand."""
    t = (0.4, -0.7)
    b = Sample("b", "Bernoulli", (Theta(0),), None)
    x = Sample("x", "Normal", (Theta(1), Const(0.0)), None)   # scale 0.5 + sigmoid(0) = 1
    cond = G.Cond("c", Cmp("b", 0.5), (x,), Op("sq", (Var("x"),)), (), Theta(1))
    inner = Sample("z", "Bernoulli", (Op("add", (Theta(1), Var("s"))),), None)
    scan = G.Scan("s", 2, Const(0.5), (inner,), Op("add", (Op("mul", (Const(0.5), Var("s"))), Var("z"))))
    prog = Program(t, (b, cond, scan), Op("add", (Var("c"), Op("sq", (Var("s"),)))))

    def by_hand(t):
        p = _sig(t[0])
        e_c = p * (t[1] ** 2 + 1) + (1 - p) * t[1]
        e_s2 = 0.0
        for z1 in (0, 1):
            q1 = _sig(t[1] + 0.5)
            s1 = 0.25 + z1
            for z2 in (0, 1):
                q2 = _sig(t[1] + s1)
                s2 = 0.5 * s1 + z2
                e_s2 = e_s2 + (q1 if z1 else 1 - q1) * (q2 if z2 else 1 - q2) * s2 ** 2
        return e_c + e_s2

    v, g = G.exact(prog)
    with jax.enable_x64(True):
        tt = jnp.asarray(t, jnp.float64)
        np.testing.assert_allclose(v, np.asarray(by_hand(tt)), rtol=1e-8)
        np.testing.assert_allclose(g, np.asarray(jax.grad(by_hand)(tt)), rtol=1e-7, atol=1e-9)


# --- the generator -------------------------------------------------------------------------------------

def test_generator_is_deterministic_and_covers_the_families_and_estimators():
    """Generation alone (no tracing): 300 programs use every family, every estimator class,
    cond (with random choices inside), scan (with random choices inside), comparisons, and
    estimators given both ways; every one is within the budgets."""
    assert G.generate(5) == G.generate(5) and G.generate(5) != G.generate(6)
    fams, ests, feats = set(), set(), set()
    for seed in range(300):
        p = G.generate(seed)
        assert 1 <= G.n_choices(p) <= G.MAX_SITES and G.grid_size(p) <= G.MAX_GRID
        for s in G._walk(p.stmts):
            if isinstance(s, Sample):
                fams.add(s.family)
                ests.add(type(G._inner(s.est)).__name__)
                feats.add("baseline" if type(s.est).__name__ == "Baseline" else "plain")
                feats.add("at site" if s.at_site else "mapped")
                if s.shift:
                    feats.add("vector site")
            elif isinstance(s, G.Cond):
                feats.add("cond")
                if s.then or s.orelse:
                    feats.add("cond with sites")
            elif isinstance(s, G.Scan):
                feats.add("scan with sites" if s.body else "scan")
        if "Cmp(" in repr(p):
            feats.add("comparison")
    assert fams == set(G.LINKS), fams
    assert ests == {"Reparam", "ScoreFunction", "LeaveOneOut", "Enum", "MVD", "ARM", "DisARM"}, ests
    assert feats == {"baseline", "plain", "at site", "mapped", "vector site", "cond", "cond with sites", "scan",
                     "scan with sites", "comparison"}, feats


# --- the check has power: a planted bias is caught -------------------------------------------------------

@estimator_dataclass
class _ScoreWithoutScore(Estimator):
    """A plausible bug: the score function with its score term dropped (claims unbiased)."""

    def jvp(self, key, site, kont):
        k1, k2 = jax.random.split(key)
        return kont(k2, site.dist().sample(k1), None)


def test_check_catches_a_planted_bias():
    """The same program passes with the score function and fails with the planted bug."""
    def prog(est):
        b = Sample("b", "Bernoulli", (Theta(0),), est)
        x = Sample("x", "Normal", (Op("add", (Theta(1), Var("b"))), Const(0.0)), G.Reparam())
        return Program(_TH, (b, x), Op("add", (Op("mul", (Const(2.0), Var("b"))), Op("sin", (_X,)))))

    good, planted = G.check(prog(G.ScoreFunction())), G.check(prog(_ScoreWithoutScore()))
    assert good["status"] == "pass", good
    assert planted["verdict"] == "yes" and planted["status"] == "fail", planted


def test_a_pathwise_comparison_is_counted_unverified():
    """A reparameterized value reaching a comparison: the plan says "unverified", so the
    fuzzer counts the program and asserts nothing about its estimates."""
    x = Sample("x", "Normal", (Theta(0), Theta(1)), G.Reparam())
    prog = Program(_TH, (x,), Op("add", (Cmp("x", 0.3), Op("sin", (_X,)))))
    r = G.check(prog)
    assert r["verdict"] == "unverified" and r["status"] == "unverified", r


# --- the programs -------------------------------------------------------------------------------------

def _explain(prog, r):
    return "\n".join([G.describe(prog)] + [f"{k}: {r[k]}" for k in ("status", "verdict", "n", "mean", "se",
                                                                     "exact", "error") if k in r])


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_random_program_gradient_is_unbiased(seed):
    prog = G.generate(seed)
    r = G.check(prog, chunk=4000, max_chunks=4, seed=seed)
    assert r["status"] in ("pass", "unverified"), _explain(prog, r)


@pytest.mark.slow
def test_many_random_programs():
    """SLOW_N programs (about 12 minutes on 2 busy CPU cores); Bonferroni z over all their checks."""
    seeds = range(SLOW_START, SLOW_START + SLOW_N)
    z = _stats.z_for(5 * SLOW_N)
    counts, results = G.run_batch(seeds, z=z)
    print(counts)
    bad = [(p, r) for p, r in results if r["status"] in ("fail", "crash", "nonfinite")]
    assert not bad, "\n\n".join(_explain(p, r) for p, r in bad)
    assert counts.get("low power", 0) <= 0.1 * SLOW_N, counts
