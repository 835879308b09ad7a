"""Bad estimator choices fail when the objective is traced, naming the site and the fix."""
import jax
import jax.numpy as jnp
import numpyro.distributions as nd
import pytest
from tensorflow_probability.substrates import jax as tfp

import ppl
from ppl.estimators import (ARM, MVD, Baseline, DisARM, EMABaseline, Enum, EstimatorError, GumbelSoftmax,
                            LeaveOneOut, Reparam, StraightThrough)
from ppl.transforms import expectation

tfd = tfp.distributions


def _grad(dist_fn, est, theta=0.3, via_site=False):
    def obj(t):
        x = ppl.sample(("guide", "z"), dist_fn(t), estimator=est if via_site else None)
        return jnp.sum(jnp.asarray(x, jnp.float32))
    E = expectation(obj) if via_site else expectation(obj, estimators={("guide", "z"): est})
    return jax.eval_shape(lambda t: E.grad(jax.random.key(0), t), theta)  # tracing only


BAD = [
    ("reparam-bernoulli", lambda t: nd.Bernoulli(logits=t), Reparam(), r"Reparam at site 'guide/z'.*no reparameterized"),
    ("enum-poisson", lambda t: nd.Poisson(jnp.exp(t)), Enum(), r"Enum at site 'guide/z'.*Poisson.*infinite"),
    ("enum-geometric", lambda t: nd.Geometric(probs=jax.nn.sigmoid(t)), Enum(), r"'guide/z'.*infinite"),
    ("enum-normal", lambda t: nd.Normal(t, 1.0), Enum(), r"'guide/z'.*infinite or continuous"),
    ("enum-too-large", lambda t: nd.Categorical(logits=jnp.zeros((5, 10)) + t), Enum(),
     r"'guide/z'.*10\^5 = 100000 values, more than max_size=4096"),
    ("enum-too-large-small-limit", lambda t: nd.Bernoulli(logits=jnp.zeros(4) + t), Enum(max_size=8),
     r"2\^4 = 16 values, more than max_size=8"),
    ("mvd-gamma", lambda t: nd.Gamma(jnp.exp(t), 1.0), MVD(),
     r"MVD at site 'guide/z'.*Gamma.*Normal, Bernoulli, Categorical, Poisson, Geometric, Exponential"),
    ("mvd-tfp-beta", lambda t: tfd.Beta(jnp.exp(t), 1.0), MVD(), r"'guide/z'.*Beta.*supports the families"),
    ("arm-normal", lambda t: nd.Normal(t, 1.0), ARM(), r"ARM at site 'guide/z'.*Bernoulli.*Normal"),
    ("disarm-categorical", lambda t: nd.Categorical(logits=jnp.zeros(3) + t), DisARM(), r"DisARM at site 'guide/z'"),
    ("loo-one-sample", lambda t: nd.Normal(t, 1.0), LeaveOneOut(1), r"LeaveOneOut at site 'guide/z'.*num_samples >= 2"),
    ("enum-batch-size-0", lambda t: nd.Bernoulli(logits=t), Enum(batch_size=0),
     r"Enum at site 'guide/z': batch_size=0; it must be an integer >= 1"),
    ("mvd-batch-size-float", lambda t: nd.Bernoulli(logits=t), MVD(batch_size=2.0), r"MVD at site 'guide/z': batch_size=2.0"),
    ("gumbel-int-bernoulli", lambda t: nd.Bernoulli(logits=t), GumbelSoftmax(),
     r"GumbelSoftmax at site 'guide/z'.*dtype int32.*dtype=jnp.float32"),
    ("st-categorical-index", lambda t: nd.Categorical(logits=jnp.zeros(3) + t), StraightThrough(),
     r"StraightThrough at site 'guide/z'.*OneHotCategorical"),
    ("baseline-passes-inner-check", lambda t: nd.Bernoulli(logits=t), Baseline(Reparam(), 1.0), r"Reparam at site 'guide/z'"),
    ("ema-passes-inner-check", lambda t: nd.Poisson(jnp.exp(t)), EMABaseline(Enum()), r"Enum at site 'guide/z'"),
]


@pytest.mark.parametrize("name,dist_fn,est,match", BAD, ids=[b[0] for b in BAD])
def test_bad_choice_fails_at_trace_time(name, dist_fn, est, match):
    with pytest.raises(EstimatorError, match=match):
        _grad(dist_fn, est)


def test_site_annotation_is_checked_too():
    with pytest.raises(EstimatorError, match=r"ARM at site 'guide/z'"):
        _grad(lambda t: nd.Normal(t, 1.0), ARM(), via_site=True)


def test_plan_raises_the_same_error():
    def obj(t):
        return ppl.sample("n", nd.Poisson(jnp.exp(t))).astype(jnp.float32)
    with pytest.raises(EstimatorError, match=r"Enum at site 'n'"):
        expectation(obj, estimators={"n": Enum()}).plan(0.0)
