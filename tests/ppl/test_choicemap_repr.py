"""What ``print(trace.choices)`` shows: values when small and concrete, dtype and shape otherwise."""
import jax
import jax.numpy as jnp
import numpyro.distributions as nd

import ppl


def _model():
    ppl.sample("a", nd.Normal(0.0, 1.0))
    ppl.sample("b", nd.Normal(0.0, 1.0).expand([3]))
    ppl.sample("c", nd.Normal(0.0, 1.0).expand([100]))
    ppl.sample("k", nd.Bernoulli(0.5))


def test_small_values_are_printed_large_ones_summarized():
    cm = ppl.ChoiceMap.from_dict({"a": jnp.float32(1.5), "enc": {"z": jnp.array([1.0, -2.0])},
                                  "big": jnp.zeros((10, 10))})
    text = repr(cm)
    assert "'a': 1.5" in text
    assert "'enc/z': [ 1., -2.]" in text
    assert "'big': float32[10, 10]" in text


def test_trace_choices_show_values():
    tr = ppl.simulate(_model)(jax.random.key(0))
    text = repr(tr.choices)
    assert f"'a': {float(tr.choices['a']):.4f}"[:9] in text
    assert "'c': float32[100]" in text
    assert "'k': 1" in text or "'k': 0" in text


def test_traced_values_say_so():
    seen = []

    @jax.jit
    def f(key):
        seen.append(repr(ppl.simulate(_model)(key).choices))
        return 0

    f(jax.random.key(0))
    assert "'a': float32[] (traced)" in seen[0]
