"""Continuous relaxations of Bernoulli / one-hot Categorical sites. BIASED gradients."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ppl.transforms import Estimator, EstimatorError
from ppl.transforms._estimator import estimator_dataclass

from ._draws import logistic

__all__ = ["GumbelSoftmax", "StraightThrough"]


def _check_relaxable(est, site):
    d, dtype = site.dist(), np.dtype(site.site.dtype)
    kind = "bernoulli" if d.family == "Bernoulli" else "onehot" if d.name == "OneHotCategorical" else None
    if kind is None:
        raise EstimatorError(
            f"{type(est).__name__} at site {site.name!r}: relaxations exist for Bernoulli and "
            f"OneHotCategorical sites, not {d.name}. For a Categorical index use Enum(), MVD() or "
            "ScoreFunction(); for a relaxation sample tfd.OneHotCategorical(logits, dtype=jnp.float32).")
    if dtype.kind != "f":
        raise EstimatorError(
            f"{type(est).__name__} at site {site.name!r}: the site's values have dtype {dtype}, so the "
            "rest of the program cannot receive a relaxed (real-valued) sample or its tangent. "
            "Sample a float-valued distribution instead, e.g. tfd.Bernoulli(logits=a, dtype=jnp.float32) "
            "or tfd.OneHotCategorical(logits=a, dtype=jnp.float32), and write the rest of the program "
            "for real values (NumPyro's Bernoulli/Categorical are integer-valued).")
    return kind


def _relaxed(site, key, temperature):
    """``((soft, dsoft), hard)``: the relaxed sample with its tangent, and the exact sample.

    Bernoulli: ``soft = sigmoid((a + L)/t)``, ``L ~ Logistic``, ``hard = 1[a + L > 0]``;
    one-hot: ``soft = softmax((logits + G)/t)``, ``G ~ Gumbel``, ``hard = onehot(argmax)``.
    The hard sample is exact; the logits come from ``log_prob`` (any parameterization).
    """
    d = site.dist()
    shape, dtype = site.site.value_shape, site.site.dtype
    if d.family == "Bernoulli":
        noise = logistic(key, shape, dtype)
        one, zero = jnp.ones(shape, dtype), jnp.zeros(shape, dtype)
        soft = site.jvp(lambda dd: jax.nn.sigmoid((dd.sampling_log_prob(one) - dd.sampling_log_prob(zero) + noise) / temperature))
        return soft, (soft[0] > 0.5).astype(dtype)
    k = shape[-1]
    g = jax.random.gumbel(key, shape, dtype)
    eye = jnp.broadcast_to(jnp.eye(k, dtype=dtype).reshape((k,) + (1,) * (len(shape) - 1) + (k,)), (k,) + shape)
    soft = site.jvp(lambda dd: jax.nn.softmax((jnp.moveaxis(jax.vmap(dd.sampling_log_prob)(eye), 0, -1) + g) / temperature, -1))
    return soft, jax.nn.one_hot(jnp.argmax(soft[0], -1), k, dtype=dtype)


@estimator_dataclass
class GumbelSoftmax(Estimator):
    """Gumbel-softmax / Concrete relaxation (Jang et al. 2017; Maddison et al. 2017). BIASED.

    Passes the *relaxed* sample ``soft`` (see ``_relaxed``) and its pathwise tangent to the
    continuation: value ``k(soft)``, tangent ``dk(soft)``. Both value and gradient are biased
    (the objective is evaluated off the support); the bias vanishes as ``temperature -> 0``
    while the variance grows like ``1/temperature``.

    Preconditions: a float-valued Bernoulli or OneHotCategorical site (e.g. TFP with
    ``dtype=jnp.float32``); integer sites raise, since the continuation was traced for
    integers and a relaxed value has no meaning there. One continuation call.
    The plan marks the site "NO (biased)".
    """

    unbiased = False
    temperature: object = 0.5

    def check(self, site):
        _check_relaxable(self, site)

    def jvp(self, key, site, kont):
        k1, k2 = jax.random.split(key)
        (soft, dsoft), _ = _relaxed(site, k1, self.temperature)
        return kont(k2, soft, dsoft)

    def describe(self):
        return "GumbelSoftmax (BIASED)"


@estimator_dataclass
class StraightThrough(Estimator):
    """Straight-through Gumbel estimator (Bengio et al. 2013; Jang et al. 2017). BIASED.

    Passes the *exact* hard sample as the value and the tangent of the relaxed sample as its
    tangent: value ``k(hard)`` (unbiased), tangent ``dk(hard)[dsoft]`` (biased: pretends
    ``d hard = d soft``). Lower variance than GumbelSoftmax at small temperatures.

    Preconditions: as GumbelSoftmax (a float-valued Bernoulli or OneHotCategorical site;
    integer sites raise because ADEV drops tangents of integer values). One continuation call.
    """

    unbiased = False
    temperature: object = 1.0

    def check(self, site):
        _check_relaxable(self, site)

    def jvp(self, key, site, kont):
        k1, k2 = jax.random.split(key)
        (_, dsoft), hard = _relaxed(site, k1, self.temperature)
        return kont(k2, hard, dsoft)

    def describe(self):
        return "StraightThrough (BIASED)"

