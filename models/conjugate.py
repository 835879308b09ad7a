"""Small models with exact answers: posteriors and log evidence in closed form.

Each model is a program (``model(...)``) plus its ground truth, used by tests and examples.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from jax.scipy.special import betaln

import ppl

__all__ = ["NormalNormal", "BetaBernoulli", "TwoCoins"]


@dataclasses.dataclass(frozen=True)
class NormalNormal:
    """``mu ~ N(prior_loc, prior_scale)``; ``y_i ~ N(mu, obs_scale)`` for each observation.

    Posterior: ``N(post_loc, post_scale)`` with precision ``1/s0^2 + n/s^2``.
    Evidence: ``y ~ N(m0 1, s^2 I + s0^2 1 1^T)``.
    """

    prior_loc: float = 0.0
    prior_scale: float = 1.0
    obs_scale: float = 1.0

    def model(self, y):
        mu = ppl.sample("mu", nd.Normal(self.prior_loc, self.prior_scale))
        ppl.sample("y", nd.Normal(mu, self.obs_scale).expand(y.shape), obs=y)
        return mu

    def posterior(self, y):
        """``(loc, scale)`` of the exact posterior of ``mu``."""
        n = y.shape[0]
        prec = 1.0 / self.prior_scale**2 + n / self.obs_scale**2
        loc = (self.prior_loc / self.prior_scale**2 + jnp.sum(y) / self.obs_scale**2) / prec
        return loc, 1.0 / jnp.sqrt(prec)

    def log_evidence(self, y):
        n = y.shape[0]
        cov = self.obs_scale**2 * jnp.eye(n) + self.prior_scale**2 * jnp.ones((n, n))
        return jax.scipy.stats.multivariate_normal.logpdf(y, jnp.full(n, self.prior_loc), cov)


@dataclasses.dataclass(frozen=True)
class BetaBernoulli:
    """``p ~ Beta(a, b)``; ``y_i ~ Bernoulli(p)``. Posterior ``Beta(a + sum y, b + n - sum y)``."""

    a: float = 2.0
    b: float = 2.0

    def model(self, y):
        p = ppl.sample("p", nd.Beta(self.a, self.b))
        ppl.sample("y", nd.Bernoulli(probs=p).expand(y.shape), obs=y)
        return p

    def posterior(self, y):
        k = jnp.sum(y)
        return self.a + k, self.b + y.shape[0] - k

    def log_evidence(self, y):
        a2, b2 = self.posterior(y)
        return betaln(a2, b2) - betaln(self.a, self.b)


@dataclasses.dataclass(frozen=True)
class TwoCoins:
    """Two dependent coins and a noisy observation of their sum; exact by enumeration.

    ``c1 ~ Bernoulli(p1)``; ``c2 ~ Bernoulli(p2 if c1 else p3)``; ``y ~ N(c1 + c2, s)``.
    """

    p1: float = 0.3
    p2: float = 0.8
    p3: float = 0.4
    s: float = 0.7

    def model(self, y):
        c1 = ppl.sample("c1", nd.Bernoulli(probs=self.p1))
        c2 = ppl.sample("c2", nd.Bernoulli(probs=jnp.where(c1 == 1, self.p2, self.p3)))
        ppl.sample("y", nd.Normal((c1 + c2).astype(jnp.float32), self.s), obs=y)
        return c1 + c2

    def joint_table(self, y):
        """``log p(c1, c2, y)`` as a 2x2 table."""
        c1 = jnp.array([0, 1])[:, None]
        c2 = jnp.array([0, 1])[None, :]
        lp1 = jnp.where(c1 == 1, jnp.log(self.p1), jnp.log1p(-self.p1))
        q = jnp.where(c1 == 1, self.p2, self.p3)
        lp2 = jnp.where(c2 == 1, jnp.log(q), jnp.log1p(-q))
        lpy = jax.scipy.stats.norm.logpdf(y, (c1 + c2).astype(jnp.float32), self.s)
        return lp1 + lp2 + lpy

    def log_evidence(self, y):
        return jax.scipy.special.logsumexp(self.joint_table(y))

    def posterior(self, y):
        t = self.joint_table(y)
        return jnp.exp(t - jax.scipy.special.logsumexp(t))
