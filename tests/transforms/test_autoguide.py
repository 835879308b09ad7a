"""Autoguides against exact answers.

Conjugate Bayesian linear regression (known noise) with correlated columns: the exact
posterior is N(MEAN, COV) with precision PREC = I / prior^2 + X'X / sigma^2.

- AutoMultivariateNormal at the exact posterior makes every log weight equal to log p(y)
  (closed form), so elbo and iwae both return it exactly: this checks the guide's joint density
  (the conditional chain over two sites) with no Monte Carlo error.
- AutoMultivariateNormal fitted with ``fit`` recovers MEAN and COV; AutoNormal recovers MEAN
  and the mean-field optimum sd 1 / sqrt(diag(PREC)) (not the marginal sd, 2.1x larger here).
- AutoDelta fitted finds the joint MAP of (w, sigma) with sigma ~ HalfNormal (through
  biject_to), against a 1-d numerical optimization of the profile (scipy).
- Constrained sites: the guide's density is N(log sigma; loc, scale) - log sigma by hand.
"""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import optax
import pytest
import scipy.optimize
import scipy.stats

import ppl
from ppl.estimators import Enum
from ppl.transforms import (AutoDelta, AutoGuideError, AutoLowRankMultivariateNormal, AutoMultivariateNormal,
                            AutoNormal, expectation, init_to_feasible, init_to_value)
from ppl.transforms.fit import fit
from ppl.transforms.objectives import elbo, iwae

N, D, SIG, PRIOR = 40, 3, 0.5, 1.0
_rng = np.random.default_rng(0)
_A = _rng.normal(size=(N, D))
_A[:, 1] = 0.8 * _A[:, 0] + 0.6 * _A[:, 1]  # correlated columns: posterior correlation -0.88
X = jnp.asarray(_A, jnp.float32)
Y = jnp.asarray(_A @ np.array([0.8, -0.4, 1.2]) + SIG * _rng.normal(size=N), jnp.float32)
_Xd, _Yd = np.asarray(X, np.float64), np.asarray(Y, np.float64)
PREC = np.eye(D) / PRIOR ** 2 + _Xd.T @ _Xd / SIG ** 2
COV = np.linalg.inv(PREC)
MEAN = COV @ _Xd.T @ _Yd / SIG ** 2
SD = np.sqrt(np.diag(COV))
LOG_EVIDENCE = scipy.stats.multivariate_normal(np.zeros(N), SIG ** 2 * np.eye(N) + PRIOR ** 2 * _Xd @ _Xd.T).logpdf(_Yd)


def model(x, y):
    w = ppl.sample("w", nd.Normal(0.0, PRIOR).expand((D,)).to_event(1))
    ppl.sample("y", nd.Normal(x @ w, SIG).to_event(1), obs=y)


def model_two_sites(x, y):  # the same model, w split over two addresses
    a = ppl.sample("a", nd.Normal(0.0, PRIOR))
    b = ppl.sample("b", nd.Normal(0.0, PRIOR).expand((D - 1,)).to_event(1))
    ppl.sample("y", nd.Normal(x @ jnp.concatenate([a[None], b]), SIG).to_event(1), obs=y)


def _inv_softplus(x):
    return np.log(np.expm1(x))


def _fit(guide, steps=1000, k=8, seed=0):
    params = guide.init(jax.random.key(seed), X, Y)
    E = expectation(elbo(model, guide))
    loss = lambda key, p, b: -jnp.mean(jax.vmap(lambda kk: E.estimate(kk, (X, Y), (p,)))(jax.random.split(key, k)))
    r = fit(loss, optax.adam(optax.exponential_decay(0.05, steps, 0.02)), params, key=jax.random.key(seed + 10),
            num_steps=steps, chunk=steps, progress=False)
    return r.params


def test_mvn_at_the_exact_posterior_gives_the_log_evidence_in_elbo_and_iwae():
    g = AutoMultivariateNormal(model_two_sites)
    p = g.init(jax.random.key(0), X, Y)
    assert g.layout == {"a": (0, 1, ()), "b": (1, 2, (2,))}
    L = np.linalg.cholesky(COV)
    p = {"loc": jnp.asarray(MEAN, jnp.float32),
         "scale_tril": jnp.asarray(np.tril(L, -1) + np.diag(_inv_softplus(np.diag(L))), jnp.float32)}
    np.testing.assert_allclose(g.covariance(p), COV, rtol=1e-4, atol=1e-7)
    for obj in (elbo(model_two_sites, g), iwae(model_two_sites, g, 4)):
        E = expectation(obj)
        vals = jax.jit(jax.vmap(lambda k: E.estimate(k, (X, Y), (p,))))(jax.random.split(jax.random.key(1), 3))
        np.testing.assert_allclose(vals, LOG_EVIDENCE, rtol=0, atol=2e-3)  # float32 sums of 40 terms
    # negative control: the mean-field guide at the exact marginal sds is not the posterior
    gn = AutoNormal(model_two_sites)
    gn.init(jax.random.key(0), X, Y)
    pn = {"loc": {"a": jnp.float32(MEAN[0]), "b": jnp.asarray(MEAN[1:], jnp.float32)},
          "scale": {"a": jnp.float32(_inv_softplus(SD[0])), "b": jnp.asarray(_inv_softplus(SD[1:]), jnp.float32)}}
    E = expectation(elbo(model_two_sites, gn))
    v = float(jax.jit(lambda k: E.estimate(k, (X, Y), (pn,)))(jax.random.key(0)))
    assert v < LOG_EVIDENCE - 0.5


def test_fit_mvn_matches_the_exact_posterior_mean_and_covariance():
    """Tolerances: over seeds 0-2 (1000 steps, 8 draws a step, Adam decayed 50x) the fitted mean
    is within 0.05 posterior sd, the sds within 4% and the correlation within 0.02; the bars are
    3x that."""
    g = AutoMultivariateNormal(model)
    p = _fit(g)
    m, C = np.asarray(g.median(p)["w"]), np.asarray(g.covariance(p))
    np.testing.assert_array_less(np.abs(m - MEAN) / SD, 0.15)
    np.testing.assert_array_less(np.abs(np.sqrt(np.diag(C)) / SD - 1), 0.12)
    corr = C / np.sqrt(np.outer(np.diag(C), np.diag(C)))
    np.testing.assert_array_less(np.abs(corr - COV / np.outer(SD, SD)), 0.06)


def test_fit_autonormal_matches_the_mean_field_optimum():
    """The mean-field optimum of KL(q || p) for a Gaussian posterior has the exact mean and
    sd 1 / sqrt(PREC_ii); over seeds 0-2 the errors are below 0.05 sd and 3%; bars 3x."""
    g = AutoNormal(model)
    p = _fit(g)
    m, s = np.asarray(g.median(p)["w"]), np.asarray(jax.nn.softplus(p["scale"]["w"]))
    np.testing.assert_array_less(np.abs(m - MEAN) / SD, 0.15)
    np.testing.assert_array_less(np.abs(s * np.sqrt(np.diag(PREC)) - 1), 0.1)
    assert np.all(s[:2] < 0.6 * SD[:2])  # the correlated pair's marginal sd is out of a mean-field guide's reach


S0 = 0.8


def model_scale(x, y):
    w = ppl.sample("w", nd.Normal(0.0, PRIOR).expand((D,)).to_event(1))
    s = ppl.sample("sigma", nd.HalfNormal(S0))
    ppl.sample("y", nd.Normal(x @ w, s).to_event(1), obs=y)


def _map_reference():
    """Joint MAP of (w, sigma): w*(sigma) is the Gaussian posterior mean; sigma by 1-d search."""
    def neg_profile(sig):
        prec = np.eye(D) / PRIOR ** 2 + _Xd.T @ _Xd / sig ** 2
        w = np.linalg.solve(prec, _Xd.T @ _Yd / sig ** 2)
        r = _Yd - _Xd @ w
        lp = -N * np.log(sig) - r @ r / (2 * sig ** 2) - w @ w / (2 * PRIOR ** 2) - sig ** 2 / (2 * S0 ** 2)
        return -lp, w
    sig = scipy.optimize.minimize_scalar(lambda s: neg_profile(s)[0], bounds=(0.05, 5), method="bounded",
                                         options={"xatol": 1e-10}).x
    return neg_profile(sig)[1], sig


def test_autodelta_finds_the_map_through_biject_to():
    g = AutoDelta(model_scale)
    p = g.init(jax.random.key(0), X, Y)
    E = expectation(elbo(model_scale, g))
    r = fit(lambda k, q, b: -E.estimate(k, (X, Y), (q,)), optax.adam(optax.exponential_decay(0.05, 1500, 0.05)), p,
            key=jax.random.key(1), num_steps=1500, chunk=1500, progress=False)
    w_map, s_map = _map_reference()
    med = g.median(r.params)
    # the objective is deterministic (point masses): float32 optimization accuracy
    np.testing.assert_allclose(med["w"], w_map, atol=2e-3)
    np.testing.assert_allclose(med["sigma"], s_map, rtol=2e-3)
    assert float(jnp.exp(r.params["loc"]["sigma"])) == pytest.approx(float(med["sigma"]), rel=1e-5)


def test_constrained_site_density_by_hand():
    g = AutoNormal(model_scale)
    p = g.init(jax.random.key(0), X, Y)
    p = {"loc": {"w": jnp.array([0.3, -0.2, 1.0]), "sigma": jnp.array(-0.4)},
         "scale": {"w": jnp.array([-1.0, -2.0, 0.5]), "sigma": jnp.array(-1.3)}}
    w, s = np.array([0.2, -0.1, 0.9]), 0.7
    got = jax.jit(lambda c, q: ppl.assess(g)(c, q)[0])({"w": w, "sigma": s}, p)
    sc = np.log1p(np.exp(np.array([-1.0, -2.0, 0.5, -1.3])))
    want = (scipy.stats.norm(np.array([0.3, -0.2, 1.0]), sc[:3]).logpdf(w).sum()
            + scipy.stats.norm(-0.4, sc[3]).logpdf(np.log(s)) - np.log(s))  # log |d log(s) / ds|
    np.testing.assert_allclose(got, want, rtol=1e-5)
    tr, back = jax.jit(lambda k, q: (lambda t: (t, ppl.assess(g)(t.choices, q)[0]))(ppl.simulate(g)(k, q)))(
        jax.random.key(3), p)
    assert float(tr.choices["sigma"]) > 0
    np.testing.assert_allclose(tr.score, back, rtol=1e-5)

    # the joint guide: an MVN density on (w, log sigma) minus log sigma
    gm = AutoLowRankMultivariateNormal(model_scale, rank=2)
    pm = gm.init(jax.random.key(0), X, Y)
    pm = dict(pm, loc=jnp.array([0.3, -0.2, 1.0, -0.4]))
    got = jax.jit(lambda c, q: ppl.assess(gm)(c, q)[0])({"w": w, "sigma": s}, pm)
    u = np.concatenate([w, [np.log(s)]])
    W, dd = np.asarray(pm["cov_factor"], np.float64), np.log1p(np.exp(np.asarray(pm["scale"], np.float64)))
    want = scipy.stats.multivariate_normal(np.asarray(pm["loc"]), W @ W.T + np.diag(dd ** 2)).logpdf(u) - np.log(s)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_init_options_and_scale():
    g = AutoNormal(model_scale, init_loc_fn=init_to_value({"sigma": 2.0}, fallback=init_to_feasible()), init_scale=0.3)
    p = g.init(jax.random.key(0), X, Y)
    np.testing.assert_allclose(p["loc"]["sigma"], np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(p["loc"]["w"], 0.0)
    np.testing.assert_allclose(jax.nn.softplus(p["scale"]["w"]), 0.3, rtol=1e-5)
    p = AutoDelta(model_scale).init(jax.random.key(0), X, Y)  # prior median: HalfNormal's ~ 0.54
    assert 0.2 < float(jnp.exp(p["loc"]["sigma"])) < 1.2
    with pytest.raises(AutoGuideError, match="'sigma'.*outside the site's support"):
        AutoNormal(model_scale, init_loc_fn=init_to_value({"sigma": -1.0})).init(jax.random.key(0), X, Y)


def test_errors_name_the_site():
    def poisson_model():
        ppl.sample("n", nd.Poisson(3.0))

    with pytest.raises(AutoGuideError, match="'n' is discrete"):
        AutoNormal(poisson_model).init(jax.random.key(0))

    def moving_support():
        z = ppl.sample("z", nd.Exponential(1.0))
        ppl.sample("x", nd.Uniform(0.0, z))

    with pytest.raises(AutoGuideError, match="support of site 'x'.*depends on other random choices"):
        AutoNormal(moving_support).init(jax.random.key(0))

    def subsampled(x):
        with ppl.plate("data", 100, subsample_size=x.shape[0]):
            z = ppl.sample("z", nd.Normal(0.0, 1.0).expand(x.shape))
            ppl.sample("x", nd.Normal(z, 1.0), obs=x)

    with pytest.raises(AutoGuideError, match="'z' is a latent choice inside the subsampled plate 'data'"):
        AutoNormal(subsampled).init(jax.random.key(0), jnp.zeros(10))
    with pytest.raises(AutoGuideError, match=r"Call params = guide.init\(key, \*model_args\) first"):
        ppl.simulate(AutoNormal(model))(jax.random.key(0), {})
    def scanned():
        jax.lax.scan(lambda c, _: (c, ppl.sample("s", nd.Normal(0.0, 1.0))), 0.0, None, length=3)

    with pytest.raises(ppl.UnsupportedControlFlow, match="'s' inside lax.scan"):
        AutoNormal(scanned).init(jax.random.key(0))
    with pytest.raises(AutoGuideError, match="'b'.*discrete"):
        def bern():
            ppl.sample("b", nd.Bernoulli(0.3))
        AutoDelta(bern).init(jax.random.key(0))


def test_plates_local_latents_and_discrete_sites():
    """Local latents in a plate get per-element parameters and guide sites inside the plate;
    a Bernoulli site gets per-element logits, and Enum at it gives the exact ELBO gradient."""
    n = 4
    xs = jnp.array([0.3, -1.2, 2.0, 0.7])

    def mix(x):
        mu = ppl.sample("mu", nd.Normal(0.0, 2.0))
        with ppl.plate("data", n):
            c = ppl.sample("c", nd.Bernoulli(probs=0.4 * jnp.ones(n)))
            z = ppl.sample("z", nd.Normal(mu * c, 1.0))
            ppl.sample("x", nd.Normal(z, 0.5), obs=x)

    g = AutoNormal(mix)
    p = g.init(jax.random.key(0), xs)
    assert p["loc"]["z"].shape == (n,) and p["scale"]["z"].shape == (n,) and p["logits"]["c"].shape == (n,)
    assert [s.plates[0].name for s in g.sites if s.name != "mu"] == ["data", "data"]
    p["logits"]["c"] = jnp.array([0.5, -1.0, 2.0, 0.1])
    lq = jax.jit(lambda c, q: ppl.assess(g)(c, q)[0])({"mu": 0.1, "c": jnp.array([1, 0, 1, 1]), "z": jnp.zeros(n)}, p)
    bern = nd.Bernoulli(logits=p["logits"]["c"]).log_prob(jnp.array([1, 0, 1, 1])).sum()
    norm = nd.Normal(p["loc"]["z"], jax.nn.softplus(p["scale"]["z"])).log_prob(jnp.zeros(n)).sum()
    mu = nd.Normal(p["loc"]["mu"], jax.nn.softplus(p["scale"]["mu"])).log_prob(0.1)
    np.testing.assert_allclose(lq, bern + norm + mu, rtol=1e-5)
    E = expectation(elbo(mix, g), estimators={"c": Enum()})
    assert "Enum" in str(E.plan((xs,), (p,)))
    grad = jax.jit(lambda q: E.value_and_grad(jax.random.key(1), (xs,), (q,), argnums=1)[1])(p)
    assert np.all(np.isfinite(np.asarray(grad[0]["logits"]["c"])))


def test_site_estimators_categorical_sites_init_to_sample_and_bad_params():
    from ppl.estimators import ScoreFunction
    from ppl.transforms import init_to_sample

    def cat_model():
        r = ppl.sample("r", nd.Gamma(2.0, 1.0))
        with ppl.plate("items", 5):
            ppl.sample("k", nd.Categorical(logits=jnp.array([0.1, 0.5, -0.3])).expand((5,)))
        ppl.sample("pair", nd.Bernoulli(0.3 * jnp.ones(2)).to_event(1))
        return r

    g = AutoNormal(cat_model, estimators={"r": ScoreFunction()}, init_loc_fn=init_to_sample())
    p = g.init(jax.random.key(0))
    assert p["logits"]["k"].shape == (5, 3) and p["logits"]["pair"].shape == (2,)
    tr = jax.jit(ppl.simulate(g))(jax.random.key(1), p)
    assert tr.choices["k"].shape == (5,) and float(tr.choices["r"]) > 0
    want = 5 * np.log(1 / 3) + 2 * np.log(0.5) + nd.LogNormal(p["loc"]["r"], jax.nn.softplus(p["scale"]["r"])).log_prob(tr.choices["r"])
    np.testing.assert_allclose(tr.score, want, rtol=1e-5)
    plan = str(expectation(elbo(cat_model, g)).plan((), (p,)))
    assert "ScoreFunction" in plan.splitlines()[2] and plan.splitlines()[2].startswith("r")
    with pytest.raises(AutoGuideError, match=r"no latent site \['x'\]"):
        AutoNormal(cat_model, estimators={"x": ScoreFunction()}).init(jax.random.key(0))
    with pytest.raises(AutoGuideError, match=r"no scale\['r'\].*guide.init returned"):
        ppl.simulate(g)(jax.random.key(0), {"loc": p["loc"]})
    gm = AutoMultivariateNormal(model_scale)
    gm.init(jax.random.key(0), X, Y)
    with pytest.raises(AutoGuideError, match=r"flat 'loc' of shape \(4,\)"):
        ppl.simulate(gm)(jax.random.key(0), {"loc": jnp.zeros(3), "scale_tril": jnp.eye(3)})


def test_mvn_density_with_simplex_batched_and_vmapped_sites():
    """A Dirichlet (stick-breaking, 3 -> 2 per row), a batch of HalfNormals and a vmapped
    Exponential: the joint guide's density by hand, with the prior-median init on the simplex."""
    from numpyro.distributions.transforms import biject_to

    def m():
        ppl.sample("s", nd.HalfNormal(1.0).expand((3,)))
        ppl.sample("d", nd.Dirichlet(jnp.ones(3)).expand((2,)).to_event(1))
        jax.vmap(lambda i: ppl.sample("v", nd.Exponential(1.0)))(jnp.arange(4))

    g = AutoMultivariateNormal(m)
    p = g.init(jax.random.key(0))
    assert g.layout == {"s": (0, 3, (3,)), "d": (3, 4, (2, 2)), "v": (7, 4, (4,))}
    p = dict(p, scale_tril=p["scale_tril"] + 0.05 * jnp.tril(jnp.ones((11, 11)), -1))
    tr = jax.jit(ppl.simulate(g))(jax.random.key(1), p)
    c = {k: np.asarray(tr.choices[k], np.float64) for k in ("s", "d", "v")}
    np.testing.assert_allclose(c["d"].sum(-1), 1.0, rtol=1e-5)
    sb = biject_to(nd.constraints.simplex)
    ud = np.asarray(sb.inv(tr.choices["d"]), np.float64)
    u = np.concatenate([np.log(c["s"]), ud.ravel(), np.log(c["v"])])
    L = np.asarray(g.scale_tril(p), np.float64)
    want = (scipy.stats.multivariate_normal(np.asarray(p["loc"]), L @ L.T).logpdf(u) - np.log(c["s"]).sum()
            - float(np.sum(sb.log_abs_det_jacobian(jnp.asarray(ud), tr.choices["d"]))) - np.log(c["v"]).sum())
    np.testing.assert_allclose(tr.score, want, rtol=1e-4)
