"""Attend-Infer-Repeat (Eslami et al. 2016), small: 0-3 digits on a canvas.

Model, for each step ``i < T`` (a Python loop, distinct addresses):
``present_i ~ Bernoulli(p)``, ``where_i ~ Normal(0, I_3)``, ``what_i ~ Normal(0, I_Zw)``; the
object is drawn iff ``present_0 ... present_i`` are all 1 (the count is the number of leading
ones; choices after the first 0 are sampled but do not touch the image, an augmentation that
leaves ``p(x)`` unchanged and keeps every address present in every run, so no control flow
is random). ``x ~ Normal(sum of objects, obs_scale)``. An object is ``sigmoid(decoder(what))``
(G x G) placed by a spatial transformer (bilinear sampling) with scale
``s = 0.5 exp(0.2 where_0)`` and shift ``(0.6 where_1, 0.6 where_2)`` in canvas coordinates
[-1, 1]. Guide, as in Eslami et al. and Pyro's AIR: a recurrent MLP over the canvas whose
state at step ``i`` reads the previous step's choices (``where``, ``what`` and presence: the
product ``present_0 ... present_{i-1}``, which is the published ``z_pres`` of the previous step,
absorbing at 0), and for ``what`` an encoder of the glimpse read from the canvas at ``where``
(inverse transformer).

Sites: ``("present", i)`` (TFP Bernoulli, float values: ScoreFunction by default; Enum, MVD,
LeaveOneOut apply), ``("where", i)`` and ``("what", i)`` (Normal, Reparam by default).
:func:`hybrid_estimators` mixes estimators per step as in the PLDI 2024 paper's AIR figure.

The model is an object built from its configuration, :class:`AIR` (``AIR(hidden=16)``): its
programs (``air.model``, ``air.guide``), parameters, canvases and evaluation all read their sizes
and settings from it; parameters or canvases of other sizes are refused at trace time, naming
the setting. Training: :func:`ppl.models.losses.make_loss` (minus the ELBO per canvas); with a
learned baseline (:meth:`AIR.init_baseline`, ``params["baseline"]``) every ``Baseline``
estimator gets ``b(x)``, an MLP of the canvas trained towards ``E[ELBO | x]`` (the
``"score-baseline"`` preset; Pyro's AIR also gives its score-function presence terms a learned
baseline).

The presence sites are TFP distributions: building the programs needs the ``tfp`` extra
(``pip install 'ppl[tfp]'``); without it they raise
:class:`~ppl.distributions.MissingExtraError` naming it (importing this module does not need it).

Why ``prior_present = 0.3`` (it was 0.5): in this augmented model a step's ``where``/``what``
terms are paid whether or not the step is present, so at 0.5 a blank object costs nothing
against an absent one, and Enum training (5000 steps, batch 32, Adam 1e-3) settled on too many
objects: held-out count accuracy 0.53, 1- and 2-digit canvases counted as 2 or 3 (0.4: 0.57).
Below 0.5 each present step costs ``log((1 - p) / p)`` nats: 0.3 gave 0.94 (0.62 with another
seed, which never uses a third object), 0.2 gave 0.78 and 0.1 0.63 after 3000 steps (too
few objects).
``bench/bench_air_curves.py`` records the curves per estimator.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd

import ppl

from ppl.distributions import tfp_distributions
from ppl.estimators import MVD, Baseline, Enum

from . import losses
from .losses import guide_args, model_args
from .nets import dense_apply, dense_init, mlp_apply, mlp_init

__all__ = ["AIR", "model_args", "guide_args", "hybrid_estimators", "estimator_presets", "place", "extract",
           "compiler_options"]


def _tent(p, n: int):
    """(len(p), n) bilinear weights of fractional coordinates ``p`` on the pixels 0..n-1."""
    return jnp.maximum(0.0, 1.0 - jnp.abs(p[:, None] - jnp.arange(n, dtype=p.dtype)[None, :]))


def _bilinear(img, py, px):
    """``img`` (H, W) sampled at the grid of fractional pixel coordinates ``py`` x ``px``; zero outside.

    Separable: ``K_y @ img @ K_x.T`` with tent weights, the same values as reading the four
    neighbours of each point (pixels outside the image weigh nothing), as two small matrix
    products instead of four gathers per output pixel (several times faster under ``vmap``).
    """
    h, w = img.shape
    return _tent(py, h) @ img @ _tent(px, w).T


def _grid(n):
    return 2.0 * (jnp.arange(n) + 0.5) / n - 1.0  # pixel centres in [-1, 1]


def _affine(where):
    return 0.5 * jnp.exp(0.2 * where[0]), 0.6 * where[1], 0.6 * where[2]


def place(glimpse, where, canvas: int):
    """Write a (G, G) glimpse onto a (C, C) canvas (one example, differentiable in both)."""
    s, tx, ty = _affine(where)
    g = glimpse.shape[0]
    u = (_grid(canvas) - tx) / s
    v = (_grid(canvas) - ty) / s
    px = (u + 1.0) * g / 2 - 0.5
    py = (v + 1.0) * g / 2 - 0.5
    return _bilinear(glimpse, py, px)


def extract(image, where, glimpse: int):
    """Read a (G, G) glimpse from a (C, C) image at ``where`` (the inverse transformer)."""
    s, tx, ty = _affine(where)
    c = image.shape[0]
    px = (_grid(glimpse) * s + tx + 1.0) * c / 2 - 0.5
    py = (_grid(glimpse) * s + ty + 1.0) * c / 2 - 0.5
    return _bilinear(image, py, px)


@dataclasses.dataclass(frozen=True)
class AIR:
    """Attend-Infer-Repeat with its configuration: sizes and settings, all in one place.

    ``canvas`` x ``canvas`` images hold up to ``max_steps`` objects, each a ``glimpse`` x
    ``glimpse`` image decoded from ``z_what`` latents; ``hidden`` units in the guide's
    recurrent layer, the decoder and the baseline; pixel noise ``obs_scale``; prior probability
    ``prior_present`` per step. Frozen and hashable: its methods compile once per configuration.
    """

    canvas: int = 16
    glimpse: int = 8
    max_steps: int = 3
    z_what: int = 6
    hidden: int = 64
    obs_scale: float = 0.3
    prior_present: float = 0.3  # per step; 0.5 lets blank objects stand in for absent ones

    def __post_init__(self):
        sizes = {k: getattr(self, k) for k in ("canvas", "glimpse", "max_steps", "z_what", "hidden")}
        bad = {k: v for k, v in sizes.items() if not (isinstance(v, (int, np.integer)) and v >= 1)}
        if bad:
            raise ValueError(f"AIR: sizes must be positive integers, got {bad}")
        if self.glimpse > self.canvas:
            raise ValueError(f"AIR: glimpse {self.glimpse} is larger than the canvas {self.canvas}")
        if not self.obs_scale > 0:
            raise ValueError(f"AIR: obs_scale must be > 0, got {self.obs_scale}")
        if not 0 < self.prior_present < 1:
            raise ValueError(f"AIR: prior_present must lie in (0, 1), got {self.prior_present}")

    # --- data and parameters -------------------------------------------------------------------
    def make_canvases(self, key, digits, n: int):
        """``(x (n, C*C) float32 in [0, 1], counts (n,) int32)``: 0..T digits pasted at random places."""
        digits = np.asarray(digits, np.float32)
        g, c, t = self.glimpse, self.canvas, self.max_steps
        if digits.shape[1:] != (g, g):
            raise ValueError(f"make_canvases: digits must be {g}x{g} images, got shape {digits.shape[1:]}")
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        rng = np.random.default_rng(seed)
        counts = rng.integers(0, t + 1, n)
        x = np.zeros((n, c, c), np.float32)
        for i in range(n):
            for _ in range(counts[i]):
                r, q = rng.integers(0, c - g + 1, 2)
                x[i, r:r + g, q:q + g] += digits[rng.integers(len(digits))]
        return jnp.asarray(np.clip(x, 0, 1).reshape(n, c * c)), jnp.asarray(counts, jnp.int32)

    def init_params(self, key) -> dict:
        k = jax.random.split(key, 5)
        c2, g2, h = self.canvas**2, self.glimpse**2, self.hidden
        theta = {"dec": mlp_init(k[0], [self.z_what, h, g2])}
        phi = {"rnn": mlp_init(k[1], [c2 + h + 3 + self.z_what + 1, h]),  # reads [x, h, where, what, alive]
               "pres": dense_init(k[2], h, 1, scale=0.1),
               "where": dense_init(k[3], h, 6, scale=0.1),
               "what": mlp_init(k[4], [g2 + h, h, 2 * self.z_what], final_scale=0.1)}
        return {"theta": theta, "phi": phi}

    def init_baseline(self, key) -> list:
        """A learned baseline ``b(x)`` (``params["baseline"]``): canvas -> ``hidden`` -> 1, starting at 0."""
        return losses.init_baseline(key, self.canvas**2, self.hidden)

    def check(self, params, x) -> None:
        """Raise ``ValueError`` when ``params`` or canvases ``x`` do not have this AIR's sizes."""
        self._check(params["theta"], params["phi"], x)

    def _check(self, theta, phi, x):
        c2, g2, h, zw = self.canvas**2, self.glimpse**2, self.hidden, self.z_what
        found = []

        def want(setting, what, got, expected):
            if got != expected:
                found.append(f"{what} is {got} where {setting}={getattr(self, setting)} needs {expected}")

        if x is not None:
            want("canvas", "the canvases' size", x.shape[-1], c2)
        if theta is not None:
            want("z_what", "theta['dec']'s input", theta["dec"][0]["w"].shape[0], zw)
            want("hidden", "theta['dec']'s hidden layer", theta["dec"][0]["w"].shape[1], h)
            want("glimpse", "theta['dec']'s output", theta["dec"][-1]["b"].shape[0], g2)
        if phi is not None:
            want("hidden", "phi['rnn']'s output", phi["rnn"][-1]["b"].shape[0], h)
            want("hidden", "phi['rnn']'s input", phi["rnn"][0]["w"].shape[0], c2 + h + 3 + zw + 1)
            want("z_what", "phi['what']'s output", phi["what"][-1]["b"].shape[0], 2 * zw)
            want("glimpse", "phi['what']'s input", phi["what"][0]["w"].shape[0], g2 + h)
        if found:
            raise ValueError(f"AIR: the parameters / canvases do not fit {self}: {'; '.join(found)}. "
                             "Use the AIR they were made with")

    # --- programs ---------------------------------------------------------------------------------
    def model(self, theta, x):
        """``p(counts, where, what) p(x | ...)`` for canvases ``x`` (B, C*C)."""
        self._check(theta, None, x)
        tfd = tfp_distributions("AIR (ppl.models.air)")
        b, g, c = x.shape[0], self.glimpse, self.canvas
        canvas = jnp.zeros((b, c, c))
        alive = jnp.ones((b,))
        prior = jnp.log(self.prior_present) - jnp.log1p(-self.prior_present)
        for i in range(self.max_steps):
            pres = ppl.sample(("present", i), tfd.Bernoulli(logits=jnp.full((b,), prior), dtype=jnp.float32))
            where = ppl.sample(("where", i), nd.Normal(jnp.zeros((b, 3)), 1.0).to_event(1))
            what = ppl.sample(("what", i), nd.Normal(jnp.zeros((b, self.z_what)), 1.0).to_event(1))
            alive = alive * pres
            glimpse = jax.nn.sigmoid(mlp_apply(theta["dec"], what)).reshape(b, g, g)
            canvas = canvas + alive[:, None, None] * jax.vmap(place, (0, 0, None))(glimpse, where, c)
        ppl.sample("x", nd.Normal(canvas.reshape(b, -1), self.obs_scale).to_event(1), obs=x)
        return canvas

    def guide(self, phi, x):
        """``q(present, where, what | x)``: recurrent over steps; returns the per-step choices."""
        self._check(None, phi, x)
        tfd = tfp_distributions("AIR (ppl.models.air)")
        b, g, c, zw = x.shape[0], self.glimpse, self.canvas, self.z_what
        h = jnp.zeros((b, self.hidden))
        where, what, alive = jnp.zeros((b, 3)), jnp.zeros((b, zw)), jnp.ones((b, 1))
        # the recurrent layer reads [x, h, where, what, alive] (alive: the previous steps' presence,
        # 1 until the first absent step); the canvas' share of its product is the same at every
        # step, so it is computed once (same values as the concatenated product)
        first, rest = phi["rnn"][0], phi["rnn"][1:]
        w_x, w_state = first["w"][:x.shape[-1]], first["w"][x.shape[-1]:]
        xw = x @ w_x + first["b"]
        out = []
        for i in range(self.max_steps):
            pre = xw + jnp.concatenate([h, where, what, alive], -1) @ w_state
            h = jnp.tanh(mlp_apply(rest, jnp.tanh(pre)) if rest else pre)
            pres = ppl.sample(("present", i),
                              tfd.Bernoulli(logits=dense_apply(phi["pres"], h)[:, 0] + 1.0, dtype=jnp.float32))
            wl, ws = jnp.split(dense_apply(phi["where"], h), 2, -1)
            where = ppl.sample(("where", i), nd.Normal(wl, jax.nn.softplus(ws - 1.0) + 1e-3).to_event(1))
            glimpse = jax.vmap(extract, (0, 0, None))(x.reshape(b, c, c), where, g).reshape(b, -1)
            ql, qs = jnp.split(mlp_apply(phi["what"], jnp.concatenate([glimpse, h], -1)), 2, -1)
            what = ppl.sample(("what", i), nd.Normal(ql, jax.nn.softplus(qs + 0.5413) + 1e-3).to_event(1))
            alive = alive * pres[:, None]
            out.append((pres, where, what))
        return out

    # --- evaluation -------------------------------------------------------------------------------
    def _one(self, key, params, x):
        """One guide draw for one canvas: (log weight, count, per-step where)."""
        tr = ppl.simulate(self.guide)(key, params["phi"], x[None])
        lp, _ = ppl.assess(self.model)(tr.choices, params["theta"], x[None])
        pres = jnp.stack([p[0] for p, _, _ in tr.retval])
        where = jnp.stack([w[0] for _, w, _ in tr.retval])
        return lp - tr.score, jnp.sum(jnp.cumprod(pres)), where

    @functools.partial(jax.jit, static_argnums=0)
    def infer(self, key, params, x):
        """``(log_weights (N,), counts (N,), where (N, T, 3))`` from one guide draw per canvas."""
        self.check(params, x)
        return jax.vmap(self._one, (0, None, 0))(jax.random.split(key, x.shape[0]), params, x)

    def elbo(self, key, params, x):
        return jnp.mean(self.infer(key, params, x)[0])

    def count_accuracy(self, key, params, x, counts):
        return jnp.mean(self.infer(key, params, x)[1] == counts)

    def plot_boxes(self, path, params, xs, counts):
        from ._plots import boxes

        _, n, where = self.infer(jax.random.key(0), params, xs)
        c = self.canvas
        per = []
        for j in range(xs.shape[0]):
            bs = []
            for i in range(int(n[j])):
                s, tx, ty = (float(v) for v in _affine(where[j, i]))
                bs.append((((tx - s) + 1) * c / 2, ((ty - s) + 1) * c / 2, s * c, s * c))
            per.append(bs)
        return boxes(path, np.asarray(xs), (c, c), per,
                     titles=[f"true {int(t)} / inferred {int(k)}" for t, k in zip(counts, n)],
                     suptitle="AIR: objects inferred on held-out canvases (one guide draw)")


def compiler_options() -> dict | None:
    """XLA options for compiling AIR's training step on this backend (``fit(...,
    compiler_options=air.compiler_options())``): on CPU, ``fit.CPU_FUSED_DOTS`` (the step is
    dozens of small matrix products; measured 8-28% faster at batch 64-128, same values up to
    rounding); elsewhere none."""
    from ppl.transforms.fit import CPU_FUSED_DOTS

    return dict(CPU_FUSED_DOTS) if jax.default_backend() == "cpu" else None


def hybrid_estimators() -> dict:
    """Enum for the first presence, MVD for the later ones (a per-step mix; where/what Reparam)."""
    return {("present", 0): Enum(), ("present", 1): MVD(),
            ("present", 2): MVD()}


def estimator_presets() -> dict:
    """``{label: estimators mapping}`` for the presence sites, as compared in the benchmarks.

    ``"score-baseline"`` is ScoreFunction around a :class:`Baseline` whose value
    :func:`ppl.models.losses.make_loss` sets to the learned ``b(x)`` when ``params`` has one (without it, ``b = 0``
    and the preset is plain ``"score"``).
    """
    from ppl.transforms import ScoreFunction

    return {"score": {"present": ScoreFunction()},
            "score-baseline": {"present": Baseline(ScoreFunction())},
            "enum": {"present": Enum()}, "mvd": {"present": MVD()},
            "hybrid": hybrid_estimators()}

