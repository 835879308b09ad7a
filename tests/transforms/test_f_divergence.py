"""f-divergence objectives (``objectives.f_divergence``) against their definition.

- Every closed-form weight ``h(r)`` equals ``f''(r) r^2`` computed by autodiff of ``f``.
- With known densities (1-D Gaussians, a normalized model) the objective's value and gradient
  (guide mean and log-scale, and the model's mean) agree with ``D_f`` and ``jax.grad`` of
  ``D_f`` computed independently by quadrature on a fine grid, within Monte Carlo error (the
  suite's statistics helpers). Negative control: the reverse-KL (VSD) estimate checked
  against the forward-KL gradient must fail.
- ``log_ratio=`` with the exact ratio gives the same estimate (same key) as the densities;
  the plan marks it (and ``normalize=True``) biased and strict mode refuses it; a guide choice
  that is not reparameterized is refused naming the site.
"""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl.estimators import ScoreFunction
from ppl.transforms import EstimatorError, VerdictError, expectation
from ppl.transforms import objectives as O

from .._stats import assert_biased, assert_unbiased, estimates, power_limit

DIVS = [O.REVERSE_KL, O.FORWARD_KL, O.JENSEN_SHANNON, O.HELLINGER, O.JEFFREYS, O.NEYMAN]
PSI = jnp.array(0.5)               # the model N(psi, 1)
PHI = jnp.array([0.2, 0.1])        # the guide N(phi[0], exp(phi[1])): wider than the model, so
                                   # every weight here (r, 1/r) has a finite variance
GRID = jnp.linspace(-14.0, 14.0, 20001)


def model(psi):
    ppl.sample("z", nd.Normal(psi, 1.0))


def guide(phi):
    ppl.sample("z", nd.Normal(phi[0], jnp.exp(phi[1])))


def d_f(div, psi, phi):
    """``D_f(p || q) = int q f(p / q)`` by the trapezoid rule (the independent reference)."""
    lp = jax.scipy.stats.norm.logpdf(GRID, psi, 1.0)
    lq = jax.scipy.stats.norm.logpdf(GRID, phi[0], jnp.exp(phi[1]))
    return jnp.trapezoid(jnp.exp(lq) * div.f(lp - lq), GRID)


def test_weights_are_f_second_derivative_times_r_squared_by_autodiff():
    u = jnp.linspace(-4.0, 4.0, 17)
    r = jnp.exp(u)

    @jax.jit
    def tables(u):
        out = {}
        for div in DIVS:
            f_of_r = lambda x, div=div: div.f(jnp.log(x))  # noqa: E731
            out[div.name] = (div.weight(u), jax.vmap(jax.grad(jax.grad(f_of_r)))(r) * r**2,
                             O.FDivergence(div.name, div.f).weight(u),  # the autodiff fallback
                             div.r_fprime(u), jax.vmap(jax.grad(f_of_r))(r) * r, div.f(jnp.zeros(())))
        return out

    for name, (h, f2r2, h_auto, rf1, rf1_auto, f_at_1) in tables(u).items():
        np.testing.assert_allclose(h, f2r2, rtol=2e-4, err_msg=name)
        np.testing.assert_allclose(h_auto, h, rtol=2e-4, err_msg=name)
        np.testing.assert_allclose(rf1, rf1_auto, rtol=2e-4, err_msg=name)
        assert abs(float(f_at_1)) < 1e-7, f"{name}: f(1) must be 0"
        assert np.all(np.asarray(h) > 0), f"{name}: f must be strictly convex"


@pytest.mark.statistical
def test_value_and_gradient_match_quadrature_of_the_divergence(key):
    def vg(div):
        E = expectation(O.f_divergence(model, guide, div))
        def one(k):
            v, (gm, gg) = E.value_and_grad(k, (PSI,), (PHI,), argnums=(0, 1))
            return v, jnp.concatenate([gm[0][None], gg[0]])
        return one

    fns = {d.name: vg(d) for d in DIVS}
    out = estimates(lambda k: {n: f(k) for n, f in fns.items()}, 20000, seed=3)
    for div in DIVS:
        v, g = out[div.name]
        exact_v = -d_f(div, PSI, PHI)
        exact_g = jnp.concatenate([g_[None] if g_.ndim == 0 else g_ for g_ in
                                   jax.grad(lambda a, b: -d_f(div, a, b), argnums=(0, 1))(PSI, PHI)])
        assert_unbiased(v[:, None], np.asarray(exact_v)[None], power_limit(exact_v), f"{div.name} value")
        assert_unbiased(g, exact_g, power_limit(exact_g), f"{div.name} gradient")
    # negative control: VSD's weight (h = 1) is not the forward-KL gradient
    fkl = jnp.concatenate([g_.reshape(-1) for g_ in
                           jax.grad(lambda a, b: -d_f(O.FORWARD_KL, a, b), argnums=(0, 1))(PSI, PHI)])
    assert_biased(out["reverse_kl"][1], fkl, "reverse KL against the forward-KL gradient")


def test_estimated_ratio_is_marked_biased_and_exact_ratio_reproduces_the_densities(key):
    exact = lambda c: (jax.scipy.stats.norm.logpdf(c["z"], PSI, 1.0)  # noqa: E731
                       - jax.scipy.stats.norm.logpdf(c["z"], PHI[0], jnp.exp(PHI[1])))
    known = expectation(O.f_divergence(model, guide, O.JENSEN_SHANNON, 4))
    disc = expectation(O.f_divergence(model, guide, O.JENSEN_SHANNON, 4, log_ratio=exact))
    vk, gk = known.value_and_grad(key, (PSI,), (PHI,), argnums=1)
    vd, gd = disc.value_and_grad(key, (PSI,), (PHI,), argnums=1)
    np.testing.assert_allclose(vd, vk, rtol=1e-5)
    np.testing.assert_allclose(gd[0], gk[0], rtol=1e-5)
    off = expectation(O.f_divergence(model, guide, O.JENSEN_SHANNON, 4, log_ratio=lambda c: exact(c) + 1.0))
    assert not np.allclose(off.grad(key, (PSI,), (PHI,), argnums=1)[0], gk[0], rtol=1e-2)

    # normalize=True: h / mean(h) makes forward KL blind to the model's normalizing constant
    def scaled_model(psi):
        model(psi)
        ppl.sample("c", nd.Normal(0.0, 1.0), obs=2.5)  # multiplies p by a constant
    g_norm = [expectation(O.f_divergence(m, guide, O.FORWARD_KL, 4, normalize=True)).grad(
        key, (PSI,), (PHI,), argnums=1)[0] for m in (model, scaled_model)]
    np.testing.assert_allclose(g_norm[0], g_norm[1], rtol=1e-5)

    assert known.plan((PSI,), (PHI,)).unbiased
    for obj, what in [(O.f_divergence(model, guide, O.JENSEN_SHANNON, 4, log_ratio=exact), "log_ratio"),
                      (O.f_divergence(model, guide, O.FORWARD_KL, 4, normalize=True), "normalized")]:
        plan = expectation(obj).plan((PSI,), (PHI,))
        assert not plan.unbiased and [k for k, _ in plan.objective] == ["biased"], str(plan)
        assert what in str(plan)
        with pytest.raises(VerdictError, match="marks itself biased: f_divergence"):
            jax.eval_shape(lambda p: expectation(obj, strict=True).grad(key, (PSI,), (p,), argnums=1), PHI)


def test_bad_arguments_and_non_reparameterized_guides_are_refused(key):
    with pytest.raises(TypeError, match="FDivergence"):
        O.f_divergence(model, guide, "js")
    with pytest.raises(ValueError, match="k >= 1"):
        O.f_divergence(model, guide, O.FORWARD_KL, 0)
    with pytest.raises(ValueError, match="k >= 2"):
        O.f_divergence(model, guide, O.FORWARD_KL, 1, normalize=True)
    with pytest.raises(TypeError, match="log_ratio"):
        O.f_divergence(model, guide, O.FORWARD_KL, 2, log_ratio=1.0)
    E = expectation(O.f_divergence(model, guide, O.HELLINGER, 2, log_ratio=lambda c: jnp.zeros(3)))
    with pytest.raises(ValueError, match=r"one log ratio per guide draw.*shape \(3,\)"):
        jax.eval_shape(lambda p: E.grad(key, (PSI,), (p,), argnums=1), PHI)
    E = expectation(O.f_divergence(model, guide, O.HELLINGER, 2), estimators={"z": ScoreFunction()})
    with pytest.raises(EstimatorError, match=r"f_divergence: random choice 'z' uses ScoreFunction.*reparameterized"):
        jax.eval_shape(lambda p: E.grad(key, (PSI,), (p,), argnums=1), PHI)
