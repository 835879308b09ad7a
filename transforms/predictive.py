"""Prior and posterior predictive samples, keyed by address (NumPyro's ``Predictive``).

``Predictive(model, num_samples=1000)(key, *model_args)`` simulates the model (the prior
predictive); with ``guide=`` (and its ``params`` or ``guide_args``) each sample first draws the
guide's choices and runs the model constrained to them (the posterior predictive); with
``posterior_samples={address: array}`` it runs the model at each given sample. An observed
site whose value is ``None`` (``ppl.sample("y", d, obs=y)`` called with ``y=None``) is an
ordinary random choice, so it is sampled: pass ``None`` for the data to predict.

The result is ``{address: array}`` with a leading axis of ``num_samples``: every random choice
the model samples and every ``ppl.deterministic`` record (observed values are not repeated).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl._site import fmt_address
from ppl.interpreters import generate, simulate

__all__ = ["Predictive"]


class Predictive:
    """``Predictive(model, *, guide=None, params=None, guide_args=None, posterior_samples=None,
    num_samples=None, return_sites=None)``; call it as ``(key, *model_args) -> {address: array}``.

    - ``guide`` with ``params`` (an autoguide's parameters: the guide is called as
      ``guide(params)``) or ``guide_args`` (a tuple, for any guide program).
    - ``posterior_samples``: ``{address: array}`` with a common leading axis; ``num_samples``
      may be omitted (it is that axis' length).
    - ``return_sites``: the addresses to return (default: all); an address the model does not
      produce raises ``KeyError`` listing the ones it does.
    """

    def __init__(self, model, *, guide=None, params=None, guide_args=None, posterior_samples=None,
                 num_samples=None, return_sites=None):
        if not callable(model):
            raise TypeError(f"Predictive(model): model must be a program, got {model!r}")
        if params is not None and guide_args is not None:
            raise ValueError("Predictive: give the guide's params or its guide_args, not both "
                             "(params=p is guide_args=(p,)).")
        if params is not None:
            guide_args = (params,)
        if guide_args is not None and guide is None:
            raise ValueError("Predictive: params/guide_args were given without a guide; pass guide=.")
        if guide is not None and guide_args is None:
            raise ValueError("Predictive: a guide needs its parameters: params=... (an autoguide's) "
                             "or guide_args=(...) (the guide program's arguments).")
        if guide is not None and posterior_samples is not None:
            raise ValueError("Predictive: give either a guide or posterior_samples, not both.")
        if posterior_samples is not None:
            posterior_samples = {(fmt_address(k) if isinstance(k, tuple) else k): jnp.asarray(v)
                                 for k, v in dict(posterior_samples).items()}
            lens = {k: (v.shape[0] if v.ndim else None) for k, v in posterior_samples.items()}
            n = set(lens.values())
            if not lens or None in n or len(n) != 1:
                raise ValueError("Predictive(posterior_samples=...): every array needs the same "
                                 f"leading (sample) axis; got leading lengths {lens}.")
            (n,) = n
            if num_samples is None:
                num_samples = n
            elif num_samples != n:
                raise ValueError(f"Predictive(num_samples={num_samples!r}) disagrees with "
                                 f"posterior_samples, which hold {n} samples; omit num_samples.")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"Predictive(num_samples={num_samples!r}): must be a positive int "
                             "(how many samples to draw).")
        if return_sites is not None:
            if isinstance(return_sites, str):
                raise TypeError("Predictive(return_sites=...): a list of addresses, e.g. ['y'], not a str")
            return_sites = [fmt_address(a) if isinstance(a, tuple) else a for a in return_sites]
        self.model, self.guide, self.guide_args = model, guide, guide_args
        self.posterior_samples, self.num_samples, self.return_sites = posterior_samples, num_samples, return_sites

    def _one(self, key, given, model_args):
        k1, k2 = jax.random.split(key)
        if self.guide is not None:
            given = simulate(self.guide)(k1, *self.guide_args).choices
        tr, _ = generate(self.model)(k2, given if given is not None else {}, *model_args)
        out = {fmt_address(a): v for a, v in tr.choices.items()}
        out.update({fmt_address(a): v for a, v in tr.deterministics.items()})
        return out

    def __call__(self, key, *model_args):
        keys = jax.random.split(key, self.num_samples)
        one = jax.vmap(lambda k, g: self._one(k, g, model_args))
        if self.return_sites is not None:  # checked before anything is sampled
            have = jax.eval_shape(one, keys[:1], jax.tree_util.tree_map(lambda v: v[:1], self.posterior_samples))
            missing = [a for a in self.return_sites if a not in have]
            if missing:
                raise KeyError(f"Predictive(return_sites=...): {missing} not produced by the model; it "
                               f"samples or records {sorted(have)} (observed sites with a value are not "
                               "sampled: pass None for the data to predict).")
        out = jax.jit(one)(keys, self.posterior_samples)
        return out if self.return_sites is None else {a: out[a] for a in self.return_sites}
