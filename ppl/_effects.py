"""NumPyro's effect primitives inside a ppl program: refused by name, with the ppl equivalent.

ppl's random choices are JAX primitives, not NumPyro messages, so NumPyro's own effects
(``numpyro.sample``, ``param``, ``plate``, ``factor``, ``deterministic``, ``subsample``,
``prng_key``, and handlers such as ``numpyro.handlers.scale``) would otherwise be ignored or
fail obscurely inside a ppl program (``numpyro.sample`` without a seed handler asserts,
``numpyro.param`` returns its initial value as a constant that never trains).

Two checks, both free when NumPyro's primitives are not used:

- while ppl stages a program (:func:`guard`, used by ``_interp.stage``), a NumPyro
  ``Messenger`` sits on top of NumPyro's handler stack. NumPyro's primitives send a message
  through ``apply_stack`` whenever that stack is non-empty, so the first one reaches the guard,
  which raises :class:`NumPyroEffectError` naming the call and the ppl equivalent;
- ``ppl.sample`` and ``ppl.deterministic`` call :func:`check_no_handler`: a NumPyro handler
  entered inside the program (above the guard) would be silently ignored by ppl's sites, so
  it is refused by name.

A handler that stops messages (``numpyro.handlers.block``) hides NumPyro primitives inside it
from the guard; ppl sites inside it are still refused.
"""
from __future__ import annotations

import contextlib

from numpyro import primitives as _npp
from numpyro.distributions.distribution import Unit as _Unit

__all__ = ["NumPyroEffectError", "guard", "check_no_handler"]


class NumPyroEffectError(TypeError):
    """A NumPyro effect primitive or handler was used inside a ppl program."""


_PLATE_FIX = (
    "Use ppl.plate(name, size, subsample_size=None) instead: `with ppl.plate('data', N, "
    "subsample_size=B):` around the ppl.sample calls, with the plate's dimension given by "
    "jax.vmap over the ppl.sample call or a batched distribution (.expand(shape)); with "
    "subsample_size the enclosed log densities are scaled by N / batch size")

_FACTOR_FIX = (
    "ppl has no factor statement: in an objective add the term to the returned value; in a "
    "model observe a Unit distribution, ppl.sample(address, numpyro.distributions.Unit(log_factor), "
    "obs=jnp.zeros(jnp.shape(log_factor) + (0,))), whose log density is log_factor")

_MESSAGE_FIX = {
    "sample": "use ppl.sample(address, distribution, obs=...) instead; ppl's interpreters supply "
              "the randomness (programs take no PRNG key)",
    "param": "pass parameters as arguments of the program and differentiate with respect to them "
             "(e.g. expectation(objective).value_and_grad(key, *args, argnums=...) or "
             "ppl.transforms.fit.fit); a numpyro.param inside a ppl program would be a constant "
             "that never trains",
    "deterministic": "use ppl.deterministic(address, value) instead",
    "plate": _PLATE_FIX,
    "subsample": _PLATE_FIX,
    "prng_key": "programs take no PRNG key: make random choices with ppl.sample and let an "
                "interpreter (ppl.simulate(program)(key, *args), ...) supply the randomness",
    "mutable": "keep state outside the program: pass it in as an argument and return the new value",
}

_HANDLER_FIX = {
    "seed": "ppl's interpreters take the key: ppl.simulate(program)(key, *args)",
    "trace": "use ppl.simulate(program)(key, *args), whose Trace holds the choices and score",
    "condition": "use ppl.condition(program, choices), or the constraints of "
                 "ppl.generate(program)(key, constraints, *args)",
    "substitute": "use the constraints of ppl.generate(program)(key, constraints, *args) or "
                  "ppl.assess(program)(choices, *args)",
    "replay": "use ppl.replay(program, trace)",
    "scale": "ppl has no scale handler: for a minibatch use ppl.plate(name, N, subsample_size=B), "
             "which scales the enclosed log densities by N / batch size; otherwise multiply the "
             "log density term in the objective yourself",
    "mask": "ppl has no mask handler: mask the log density term in the objective, or use a "
            "masked distribution (distribution.mask(m)) at the site",
    "plate": _PLATE_FIX,
    "block": "sub-programs called with ppl.call are ordinary sites of the caller; there is "
             "nothing to hide",
}


def _describe(msg) -> str:
    kind = msg.get("type")
    name = msg.get("name")
    if kind == "sample" and isinstance(msg.get("fn"), _Unit):
        call, fix = f"numpyro.factor({name!r}, ...)", _FACTOR_FIX
    elif kind == "plate":
        sub = msg.get("args", (None, None))[1]
        call = f"numpyro.plate({name!r}, ...{', subsample_size=%r' % sub if sub is not None else ''})"
        fix = _PLATE_FIX
    elif kind in ("sample", "param", "deterministic", "subsample"):
        call, fix = f"numpyro.{kind}({name!r}, ...)" if name is not None else f"numpyro.{kind}(...)", _MESSAGE_FIX[kind]
    elif kind in _MESSAGE_FIX:
        call, fix = f"numpyro.{kind}(...)", _MESSAGE_FIX[kind]
    else:
        call = f"a NumPyro primitive (message type {kind!r}{', name ' + repr(name) if name else ''})"
        fix = "use ppl's constructs (ppl.sample, ppl.deterministic, ppl.call) instead"
    return (f"{call} inside a ppl program: ppl does not run NumPyro's effect handlers, so it would "
            f"be ignored or fail. {fix}.")


class _Guard(_npp.Messenger):
    """Sits on NumPyro's handler stack while ppl stages a program; refuses every message."""

    def process_message(self, msg):
        raise NumPyroEffectError(_describe(msg))


@contextlib.contextmanager
def guard():
    """Refuse NumPyro effect primitives while a ppl program is staged."""
    with _Guard():
        yield


def check_no_handler(what: str):
    """Raise if a NumPyro handler was entered inside the program (above the guard).

    ``what`` names the ppl call (e.g. ``"ppl.sample('x', ...)"``). Free when NumPyro's
    handler stack is empty or ppl's guard is on top.
    """
    stack = _npp._PYRO_STACK
    if not stack or isinstance(stack[-1], _Guard):
        return
    h = stack[-1]
    cls = type(h).__name__
    mod = type(h).__module__
    qual = f"numpyro.{cls}" if mod == "numpyro.primitives" else f"{mod}.{cls}"
    fix = _HANDLER_FIX.get(cls, "run the program through ppl's interpreters (ppl.simulate, "
                                "ppl.assess, ppl.generate, ppl.condition, ppl.replay) instead")
    raise NumPyroEffectError(
        f"{what} runs inside the NumPyro handler {qual}, which ppl's random choices do not go "
        f"through: it would be silently ignored. {fix}.")
