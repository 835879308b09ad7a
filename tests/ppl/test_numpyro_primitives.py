"""NumPyro's own effect primitives and handlers inside a ppl program are refused by name, with
the ppl equivalent, through every interpreter and through an objective; ppl programs run
inside NumPyro handlers (outside the program) and NumPyro models afterwards are unaffected."""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as nd
import numpyro.handlers as nh
import pytest
from numpyro import primitives as npp

import ppl
from ppl import NumPyroEffectError
from ppl.transforms import expectation


def _with(effect):
    """A program: one ppl site, then ``effect(x)`` (a NumPyro call), returning a float."""

    def program(t):
        x = ppl.sample("x", nd.Normal(t, 1.0))
        y = effect(x)
        return jnp.sum(x if y is None else y * x)

    return program


def _plate_sample(x):
    with numpyro.plate("data", 3):
        return ppl.sample("y", nd.Normal(x, 1.0))


def _plate_subsample(x):
    with numpyro.plate("data", 100, subsample_size=10):
        return ppl.sample("y", nd.Normal(x, 1.0))


def _scaled(x):
    with nh.scale(scale=10.0):
        return ppl.sample("y", nd.Normal(x, 1.0))


def _seeded(x):
    with nh.seed(rng_seed=0):
        return ppl.sample("y", nd.Normal(x, 1.0))


def _conditioned_det(x):
    with nh.condition(data={"y": 1.0}):
        return ppl.deterministic("d", 2 * x)


_CASES = {
    "sample": (lambda x: numpyro.sample("y", nd.Normal(x, 1.0)),
               r"numpyro\.sample\('y', \.\.\.\) inside a ppl program.*ppl\.sample\(address, distribution"),
    "sample-obs": (lambda x: numpyro.sample("y", nd.Normal(x, 1.0), obs=0.5),
                   r"numpyro\.sample\('y', \.\.\.\).*ppl\.sample"),
    "param": (lambda x: numpyro.param("w", 1.0),
              r"numpyro\.param\('w', \.\.\.\).*pass parameters as arguments.*never trains"),
    "plate": (_plate_sample, r"numpyro\.plate\('data', \.\.\.\).*jax\.vmap"),
    "plate-subsample": (_plate_subsample,
                        r"numpyro\.plate\('data', \.\.\., subsample_size=10\).*N / batch size"),
    "factor": (lambda x: numpyro.factor("f", -x ** 2),
               r"numpyro\.factor\('f', \.\.\.\).*no factor statement.*Unit\(log_factor\)"),
    "deterministic": (lambda x: numpyro.deterministic("d", 2 * x),
                      r"numpyro\.deterministic\('d', \.\.\.\).*ppl\.deterministic\(address, value\)"),
    "prng_key": (lambda x: numpyro.prng_key(), r"numpyro\.prng_key\(\.\.\.\).*take no PRNG key"),
    "handlers.scale": (_scaled, r"ppl\.sample\('y', \.\.\.\) runs inside the NumPyro handler "
                                r"numpyro\.handlers\.scale.*silently ignored.*multiply the log density"),
    "handlers.seed": (_seeded, r"numpyro\.handlers\.seed.*interpreters take the key"),
    "handlers.condition": (_conditioned_det, r"ppl\.deterministic\('d', \.\.\.\) runs inside.*"
                                             r"numpyro\.handlers\.condition.*ppl\.condition"),
}

_RUNS = {
    "simulate": lambda p: ppl.simulate(p)(jax.random.key(0), 0.3),
    "assess": lambda p: ppl.assess(p)({"x": 0.1}, 0.3),
    "generate": lambda p: ppl.generate(p)(jax.random.key(0), {"x": 0.1}, 0.3),
    "objective": lambda p: expectation(p).grad(jax.random.key(0), 0.3),
}


@pytest.mark.parametrize("run", list(_RUNS))
@pytest.mark.parametrize("case", list(_CASES))
def test_numpyro_effects_inside_a_program_are_refused_by_name(case, run):
    effect, pattern = _CASES[case]
    with pytest.raises(NumPyroEffectError, match=pattern):
        _RUNS[run](_with(effect))
    assert npp._PYRO_STACK == []  # nothing left on NumPyro's stack


def test_refused_inside_a_sub_program_and_under_jit():
    def sub(t):
        return numpyro.sample("inner", nd.Normal(t, 1.0))

    def program(t):
        return ppl.call("enc", sub, t)

    with pytest.raises(NumPyroEffectError, match=r"numpyro\.sample\('inner'"):
        jax.jit(ppl.simulate(program))(jax.random.key(0), 0.0)


def test_the_suggested_factor_equivalent_scores_the_factor():
    def program(t):
        x = ppl.sample("x", nd.Normal(t, 1.0))
        ppl.sample("f", nd.Unit(-x ** 2), obs=jnp.zeros(jnp.shape(x) + (0,)))
        return x

    lp, _ = ppl.assess(program)({"x": 0.5}, 0.3)
    np.testing.assert_allclose(lp, nd.Normal(0.3, 1.0).log_prob(0.5) - 0.25, rtol=1e-6)


def test_ppl_inside_numpyro_handlers_outside_the_program_still_works():
    """A ppl interpreter called under a NumPyro handler is not a NumPyro primitive inside the
    program; afterwards NumPyro models run as before."""
    def program(t):
        return ppl.sample("x", nd.Normal(t, 1.0))

    with nh.seed(rng_seed=1):
        tr = ppl.simulate(program)(jax.random.key(0), 0.3)
    assert np.isfinite(tr.score)

    def model():
        return numpyro.sample("z", nd.Normal(0.0, 1.0))

    with pytest.raises(NumPyroEffectError):
        ppl.simulate(_with(lambda x: numpyro.sample("y", nd.Normal(x, 1.0))))(jax.random.key(0), 0.3)
    t = nh.trace(nh.seed(model, 0)).get_trace()
    assert t["z"]["type"] == "sample" and npp._PYRO_STACK == []
