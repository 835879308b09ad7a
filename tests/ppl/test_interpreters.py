"""Laws of the interpreters, both distribution libraries, and the bad inputs they refuse."""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
from tensorflow_probability.substrates import jax as tfp

import ppl
from ppl.models.conjugate import BetaBernoulli, NormalNormal, TwoCoins

from .._stats import assert_unbiased, estimates

tfd = tfp.distributions


def mixed_model(y):
    """NumPyro and TFP, discrete and continuous, vmap, scan, a call and an observation."""
    mu = ppl.sample("mu", nd.Normal(0.0, 1.0))
    s = ppl.sample("s", tfd.Bernoulli(logits=0.3))
    k = ppl.sample("k", nd.Categorical(logits=jnp.array([0.1, 0.5, -0.2])))
    g = ppl.sample("g", tfd.Gamma(2.0, 1.5))
    xs = jax.vmap(lambda m: ppl.sample("x", nd.Normal(m, 1.0)))(mu + jnp.arange(3.0))

    def body(c, _):
        z = ppl.sample("z", tfd.Normal(c, 1.0))
        return z, z

    _, zs = jax.lax.scan(body, mu, None, length=4)
    w = ppl.call("sub", lambda a: ppl.sample("w", nd.Normal(a, 1.0)), mu)
    ppl.deterministic("total", mu + w)
    ppl.sample("y", nd.Normal(mu + s + k + g, 1.0), obs=y)
    return xs.sum() + zs.sum()


def test_simulate_addresses_shapes_and_dtypes(key):
    tr = jax.jit(ppl.simulate(mixed_model))(key, 1.0)
    assert set(tr.choices.addresses()) == {("mu",), ("s",), ("k",), ("g",), ("x",), ("z",), ("sub", "w")}
    assert tr.choices["x"].shape == (3,) and tr.choices["z"].shape == (4,)
    assert tr.choices["sub"]["w"].shape == ()
    assert jnp.issubdtype(tr.choices["s"].dtype, jnp.integer)
    assert jnp.issubdtype(tr.choices["k"].dtype, jnp.integer)
    assert "total" in tr.deterministics
    assert np.isfinite(tr.score)


def test_score_equals_assess(key):
    sim, assess = jax.jit(ppl.simulate(mixed_model)), jax.jit(ppl.assess(mixed_model))
    for k in jax.random.split(key, 3):
        tr = sim(k, 0.3)
        lp, ret = assess(tr.choices, 0.3)
        np.testing.assert_allclose(lp, tr.score, rtol=1e-5)
        np.testing.assert_allclose(ret, tr.retval, rtol=1e-5)


def test_score_is_sum_of_log_densities(key):
    """The score is the hand-computed sum of every site's log density."""
    tr = ppl.simulate(mixed_model)(key, 0.3)
    c = tr.choices
    mu, s, k, g = c["mu"], c["s"], c["k"], c["g"]
    expect = (nd.Normal(0.0, 1.0).log_prob(mu) + tfd.Bernoulli(logits=0.3).log_prob(s)
              + nd.Categorical(logits=jnp.array([0.1, 0.5, -0.2])).log_prob(k)
              + tfd.Gamma(2.0, 1.5).log_prob(g)
              + nd.Normal(mu + jnp.arange(3.0), 1.0).log_prob(c["x"]).sum()
              + tfd.Normal(jnp.concatenate([mu[None], c["z"][:-1]]), 1.0).log_prob(c["z"]).sum()
              + nd.Normal(mu, 1.0).log_prob(c["sub", "w"])
              + nd.Normal(mu + s + k + g, 1.0).log_prob(0.3))
    np.testing.assert_allclose(tr.score, expect, rtol=1e-5)


def test_jit_and_vmap_agree(key):
    sim = ppl.simulate(mixed_model)
    a = sim(key, 0.3)
    b = jax.jit(sim)(key, 0.3)
    for addr in a.choices:
        np.testing.assert_allclose(a.choices[addr], b.choices[addr], rtol=1e-6)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-5)
    keys = jax.random.split(key, 4)
    vs = jax.vmap(sim, in_axes=(0, None))(keys, 0.3)
    for i in range(4):
        one = sim(keys[i], 0.3)
        np.testing.assert_allclose(vs.score[i], one.score, rtol=1e-5)
        np.testing.assert_allclose(vs.choices["z"][i], one.choices["z"], rtol=1e-6)
    lp_j = jax.jit(ppl.assess(mixed_model))(a.choices, 0.3)[0]
    np.testing.assert_allclose(lp_j, a.score, rtol=1e-5)


def test_grad_through_assess():
    m = NormalNormal(0.0, 2.0, 0.5)
    y = jnp.array([0.3, -0.1, 0.8])
    g = jax.grad(lambda mu: ppl.assess(m.model)({"mu": mu}, y)[0])(0.7)
    expect = -(0.7 - 0.0) / 4.0 + jnp.sum(y - 0.7) / 0.25
    np.testing.assert_allclose(g, expect, rtol=1e-5)


def test_generate_weight_normal_normal(key):
    """Prior proposal: weight = log p(x, y) - log q(x) = log p(y | mu)."""
    m = NormalNormal(0.5, 1.5, 0.7)
    y = jnp.array([1.0, 0.2])
    for k in jax.random.split(key, 3):
        tr, w = ppl.generate(m.model)(k, {}, y)
        mu = tr.choices["mu"]
        expect = jax.scipy.stats.norm.logpdf(y, mu, 0.7).sum()
        np.testing.assert_allclose(w, expect, rtol=1e-5)


def test_importance_with_proposal_weight(key):
    m = BetaBernoulli(2.0, 3.0)
    y = jnp.array([1, 0, 1, 1])

    def guide(y):
        return ppl.sample("p", nd.Beta(4.0, 2.0))

    tr, w = ppl.importance(m.model, guide)(key, {}, y)
    p = tr.choices["p"]
    log_joint = (nd.Beta(2.0, 3.0).log_prob(p) + nd.Bernoulli(probs=p).log_prob(y).sum())
    np.testing.assert_allclose(w, log_joint - nd.Beta(4.0, 2.0).log_prob(p), rtol=1e-5)
    # the weight is unbiased for the evidence: exp(w) / p(y) has mean 1 (the suite's Monte Carlo
    # check); power guard: stderr <= 0.006, so an evidence 0.05 nats off (5%) fails the check
    ws = estimates(lambda k: ppl.importance(m.model, guide)(k, {}, y)[1], 16000, key=key)
    ratio = np.exp(np.asarray(ws, np.float64) - float(m.log_evidence(y)))
    assert_unbiased(ratio, 1.0, max_se=0.006, what="importance weight / evidence")


def test_conditioning_every_address_weight_equals_assess(key):
    tr = ppl.simulate(mixed_model)(key, 0.3)
    tr2, w = ppl.generate(mixed_model)(jax.random.key(7), tr.choices, 0.3)
    np.testing.assert_allclose(w, tr.score, rtol=1e-5)
    np.testing.assert_allclose(tr2.score, tr.score, rtol=1e-5)


def test_condition_program(key):
    m = TwoCoins()
    cond = ppl.condition(m.model, {"c1": jnp.int32(1)})
    tr = ppl.simulate(cond)(key, 0.5)
    assert "c1" not in tr.choices and "c2" in tr.choices
    lp, _ = ppl.assess(m.model)({"c1": 1, "c2": tr.choices["c2"]}, 0.5)
    np.testing.assert_allclose(tr.score, lp, rtol=1e-5)


def test_replay(key):
    tr = ppl.simulate(mixed_model)(key, 0.3)
    tr2 = ppl.replay(mixed_model, tr)(jax.random.key(3), 0.3)
    np.testing.assert_allclose(tr2.score, tr.score, rtol=1e-5)


def test_choicemap_dict_roundtrip():
    cm = ppl.ChoiceMap.from_dict({"a": 1.0, "enc": {"z": jnp.ones(2), "h": {"q": 3}}})
    assert cm["enc", "z"].shape == (2,)
    assert cm["enc"]["h"]["q"] == 3
    back = cm.to_dict()
    assert back["enc"]["h"]["q"] == 3 and back["a"] == 1.0
    leaves, tree = jax.tree_util.tree_flatten(cm)
    cm2 = jax.tree_util.tree_unflatten(tree, [jnp.asarray(x) * 2 for x in leaves])
    assert float(cm2["a"]) == 2.0


def test_evidence_by_enumeration_two_coins():
    m = TwoCoins()
    total = []
    for c1 in (0, 1):
        for c2 in (0, 1):
            total.append(ppl.assess(m.model)({"c1": c1, "c2": c2}, 0.4)[0])
    np.testing.assert_allclose(jax.scipy.special.logsumexp(jnp.array(total)), m.log_evidence(0.4), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# bad input: each a clear error naming the address or argument


def test_error_duplicate_address(key):
    def bad():
        ppl.sample("x", nd.Normal(0.0, 1.0))
        ppl.sample("x", nd.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="address 'x' is used twice"):
        ppl.simulate(bad)(key)


def test_error_unvisited_constraints_listed(key):
    m = NormalNormal()
    with pytest.raises(KeyError, match=r"never visits: \['muu', 'sigma'\]"):
        ppl.generate(m.model)(key, {"muu": 1.0, "sigma": 2.0}, jnp.ones(2))
    with pytest.raises(ppl.AddressMismatchError, match=r"choice map has 'nope', which the program never visits"):
        ppl.assess(m.model)({"mu": 1.0, "nope": 2.0}, jnp.ones(2))


def test_error_assess_missing_value():
    with pytest.raises(KeyError, match="assess: the program samples 'c2', which the choice map does not give"):
        ppl.assess(TwoCoins().model)({"c1": 1}, 0.3)


def test_error_assess_names_every_missing_and_extra_address():
    """A misspelt choice map: assess lists all the program's missing addresses and all the
    extra ones in one error (not only the first missing one)."""
    def model():
        a = ppl.sample("a", nd.Normal(0.0, 1.0))
        ppl.sample("b", nd.Normal(a, 1.0))
        ppl.sample("y", nd.Normal(a, 1.0), obs=0.5)

    with pytest.raises(ppl.AddressMismatchError) as info:
        ppl.assess(model)({"A": 0.0, "B": 1.0})
    assert info.value.missing == ["a", "b"] and info.value.extra == ["A", "B"]
    assert "the program samples 'a', 'b'" in str(info.value)
    assert "the choice map has 'A', 'B', which the program never visits" in str(info.value)


def test_error_value_shape_and_dtype(key):
    m = NormalNormal()
    with pytest.raises(ValueError, match="address 'mu' has shape \\(3,\\).*shape \\(\\)"):
        ppl.assess(m.model)({"mu": jnp.ones(3)}, jnp.ones(2))
    with pytest.raises(ValueError, match="address 'c1' has non-integral.*0.5.*discrete"):
        ppl.assess(TwoCoins().model)({"c1": 0.5, "c2": 1}, 0.3)
    with pytest.raises(ValueError, match="observed value for address 'y' has shape"):
        ppl.simulate(lambda: ppl.sample("y", nd.Normal(0.0, 1.0), obs=jnp.ones(2)))(key)


def test_error_not_a_distribution(key):
    with pytest.raises(TypeError, match="sample\\('x', ...\\): expected a NumPyro or TFP"):
        ppl.simulate(lambda: ppl.sample("x", 3.0))(key)


def test_error_invalid_parameters_with_validation(key):
    with ppl.validation():
        with pytest.raises(ValueError, match="sample\\('x', Normal\\(...\\)\\): parameter 'scale'"):
            ppl.sample("x", _neg_scale())


def test_validation_is_local_to_its_block_and_retraces_jit(key):
    """Concrete parameters (here closed over) are checked while an interpreter stages the
    program. The setting is part of jit's cache key: a function traced outside the block is
    traced again inside it (and validates), and the block leaves nothing behind."""
    d = _neg_scale()
    score = jax.jit(lambda k: ppl.simulate(lambda: ppl.sample("x", d))(k).score)
    score(key)
    with ppl.validation():
        with pytest.raises(ValueError, match="parameter 'scale'"):
            score(key)
        with ppl.validation(False):
            score(key)
    score(key)


def _neg_scale():
    # NumPyro validates concrete arguments itself; ppl's check names the address and also
    # covers distributions built with validation off.
    d = nd.Normal(0.0, 1.0, validate_args=False)
    object.__setattr__(d, "scale", jnp.array(-1.0))
    return d


def test_error_outside_interpreter():
    with pytest.raises(RuntimeError, match="random choice 'x' was reached outside an interpreter.*ppl.simulate"):
        ppl.sample("x", nd.Normal(0.0, 1.0))
    with pytest.raises(RuntimeError, match="outside an interpreter"):
        jax.jit(lambda: ppl.sample("x", nd.Normal(0.0, 1.0)))()


def test_error_bad_address():
    with pytest.raises(TypeError, match="an address is a str"):
        ppl.sample(3.5, nd.Normal(0.0, 1.0))


def test_error_scan_constraint_length(key):
    def prog():
        jax.lax.scan(lambda c, _: (ppl.sample("z", nd.Normal(c, 1.0)), None), 0.0, None, length=3)

    with pytest.raises(ValueError, match="address 'z'.*leading axis of length 3"):
        ppl.assess(prog)({"z": jnp.ones(2)})


def test_error_while_loop(key):
    def prog():
        return jax.lax.while_loop(lambda c: c < 3.0, lambda c: c + ppl.sample("z", nd.Exponential(1.0)), 0.0)

    with pytest.raises(ppl.UnsupportedControlFlow, match="'z' inside lax.while_loop.*lax.scan"):
        ppl.simulate(prog)(key)


def cond_program(t):
    b = ppl.sample("b", nd.Bernoulli(probs=0.3))
    return jax.lax.cond(b == 1, lambda: ppl.sample("x", nd.Normal(t, 1.0)),
                        lambda: ppl.sample("y", nd.Normal(-t, 2.0)))


def test_cond_trace_union_and_score(key):
    sim = jax.jit(ppl.simulate(cond_program))
    seen = set()
    for k in jax.random.split(key, 8):
        tr = sim(k, 1.0)
        b = int(tr.choices["b"])
        seen.add(b)
        taken = nd.Normal(1.0, 1.0).log_prob(tr.choices["x"]) if b else nd.Normal(-1.0, 2.0).log_prob(tr.choices["y"])
        np.testing.assert_allclose(tr.score, jnp.log(0.3 if b else 0.7) + taken, rtol=1e-5)
        assert float(tr.choices["y" if b else "x"]) == 0.0  # the branch not taken holds zeros
        np.testing.assert_allclose(ppl.assess(cond_program)(tr.choices, 1.0)[0], tr.score, rtol=1e-5)
    assert seen == {0, 1}


def test_cond_branch_shape_mismatch_named(key):
    def prog():
        b = ppl.sample("b", nd.Bernoulli(probs=0.3))
        return jax.lax.cond(b == 1, lambda: ppl.sample("x", nd.Normal(0.0, 1.0)),
                            lambda: ppl.sample("x", nd.Normal(jnp.zeros(2), 1.0)).sum())

    with pytest.raises(ValueError, match="address 'x' appears in several branches"):
        ppl.simulate(prog)(key)


def test_slash_strings_are_hierarchical_addresses(key):
    tr = jax.jit(ppl.simulate(lambda: ppl.call("enc", lambda: ppl.sample("z", nd.Normal(0.0, 1.0)))))(key)
    assert tr.choices["enc/z"] is tr.choices["enc", "z"]
    lp, _ = ppl.assess(lambda: ppl.sample("enc/z", nd.Normal(0.0, 1.0)))({"enc": {"z": 0.0}})
    np.testing.assert_allclose(lp, nd.Normal(0.0, 1.0).log_prob(0.0))
    with pytest.raises(TypeError, match="an address is"):
        ppl.sample("a//b", nd.Normal(0.0, 1.0))


def test_out_of_support_values_get_log_density_minus_inf_like_numpyro():
    """A distribution that passes through a site as a pytree loses NumPyro's validate_args;
    ppl restores it, so out-of-support values score -inf (not a finite or NaN number)."""
    def model():
        ppl.sample("b", nd.Bernoulli(probs=0.3))
        ppl.sample("l", nd.Bernoulli(logits=0.3))
        ppl.sample("u", nd.Beta(2.0, 2.0))
        ppl.sample("v", nd.Normal(jnp.zeros(3), 1.0).to_event(1))

    inside = {"b": 1, "l": 0, "u": 0.5, "v": jnp.ones(3)}
    w_in, _ = jax.jit(ppl.assess(model))(inside)
    assert np.isfinite(w_in)
    for addr, bad in (("b", 2), ("l", -1), ("u", 1.5), ("v", jnp.array([0.0, jnp.inf, 0.0]))):
        w, _ = jax.jit(ppl.assess(model))({**inside, addr: bad})  # traced: no warning, -inf
        assert w == -jnp.inf, addr
    with pytest.warns(UserWarning, match="Out-of-support"):   # eager: NumPyro's warning too
        w, _ = ppl.assess(model)({**inside, "u": 1.5})
    assert w == -jnp.inf
