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

Training: :func:`make_loss` is minus the ELBO per canvas; with a learned baseline
(:func:`init_baseline`, ``params["baseline"]``) every ``Baseline`` estimator it is given gets
``b(x)``, an MLP of the canvas trained towards ``E[ELBO | x]`` (the ``"score-baseline"``
preset; Pyro's AIR also gives its score-function presence terms a learned baseline).

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
from tensorflow_probability.substrates import jax as tfp

import ppl

from ppl.estimators import MVD, Baseline, Enum
from ppl.transforms import expectation
from ppl.transforms import objectives as O

from .nets import dense_apply, dense_init, mlp_apply, mlp_init

tfd = tfp.distributions

__all__ = ["AIRConfig", "make_canvases", "init_params", "model", "guide", "model_args", "guide_args",
           "elbo", "count_accuracy", "infer", "hybrid_estimators", "estimator_presets", "plot_boxes",
           "place", "extract", "init_baseline", "make_loss", "programs", "check_config", "compiler_options"]


@dataclasses.dataclass(frozen=True)
class AIRConfig:
    canvas: int = 16
    glimpse: int = 8
    max_steps: int = 3
    z_what: int = 6
    hidden: int = 64
    obs_scale: float = 0.3
    prior_present: float = 0.3  # per step; 0.5 lets blank objects stand in for absent ones


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


def make_canvases(key, digits, n: int, cfg: AIRConfig = AIRConfig()):
    """``(x (n, C*C) float32 in [0, 1], counts (n,) int32)``: 0..T digits pasted at random places."""
    digits = np.asarray(digits, np.float32)
    g, c, t = cfg.glimpse, cfg.canvas, cfg.max_steps
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


def init_params(key, cfg: AIRConfig = AIRConfig()) -> dict:
    k = jax.random.split(key, 5)
    c2, g2, h = cfg.canvas**2, cfg.glimpse**2, cfg.hidden
    theta = {"dec": mlp_init(k[0], [cfg.z_what, h, g2])}
    phi = {"rnn": mlp_init(k[1], [c2 + h + 3 + cfg.z_what + 1, h]),  # reads [x, h, where, what, alive]
           "pres": dense_init(k[2], h, 1, scale=0.1),
           "where": dense_init(k[3], h, 6, scale=0.1),
           "what": mlp_init(k[4], [g2 + h, h, 2 * cfg.z_what], final_scale=0.1)}
    return {"theta": theta, "phi": phi}


def _cfg_of(params_theta, x):
    g = int(round(params_theta["dec"][-1]["b"].shape[0] ** 0.5))
    c = int(round(x.shape[-1] ** 0.5))
    return g, c, params_theta["dec"][0]["w"].shape[0]


def model(theta, x, cfg: AIRConfig = AIRConfig()):
    """``p(counts, where, what) p(x | ...)`` for canvases ``x`` (B, C*C)."""
    b = x.shape[0]
    g, c, zw = _cfg_of(theta, x)
    canvas = jnp.zeros((b, c, c))
    alive = jnp.ones((b,))
    prior = jnp.log(cfg.prior_present) - jnp.log1p(-cfg.prior_present)
    for i in range(cfg.max_steps):
        pres = ppl.sample(("present", i), tfd.Bernoulli(logits=jnp.full((b,), prior), dtype=jnp.float32))
        where = ppl.sample(("where", i), nd.Normal(jnp.zeros((b, 3)), 1.0).to_event(1))
        what = ppl.sample(("what", i), nd.Normal(jnp.zeros((b, zw)), 1.0).to_event(1))
        alive = alive * pres
        glimpse = jax.nn.sigmoid(mlp_apply(theta["dec"], what)).reshape(b, g, g)
        canvas = canvas + alive[:, None, None] * jax.vmap(place, (0, 0, None))(glimpse, where, c)
    ppl.sample("x", nd.Normal(canvas.reshape(b, -1), cfg.obs_scale).to_event(1), obs=x)
    return canvas


def guide(phi, x, cfg: AIRConfig = AIRConfig()):
    """``q(present, where, what | x)``: recurrent over steps; returns the per-step choices."""
    b = x.shape[0]
    h = jnp.zeros((b, phi["rnn"][0]["b"].shape[0]))
    zw = phi["what"][-1]["b"].shape[0] // 2
    g = int(round((phi["what"][0]["w"].shape[0] - h.shape[1]) ** 0.5))
    c = int(round(x.shape[-1] ** 0.5))
    where, what, alive = jnp.zeros((b, 3)), jnp.zeros((b, zw)), jnp.ones((b, 1))
    # the recurrent layer reads [x, h, where, what, alive] (alive: the previous steps' presence,
    # 1 until the first absent step); the canvas' share of its product is the same at every
    # step, so it is computed once (same values as the concatenated product)
    first, rest = phi["rnn"][0], phi["rnn"][1:]
    w_x, w_state = first["w"][:x.shape[-1]], first["w"][x.shape[-1]:]
    xw = x @ w_x + first["b"]
    out = []
    for i in range(cfg.max_steps):
        pre = xw + jnp.concatenate([h, where, what, alive], -1) @ w_state
        h = jnp.tanh(mlp_apply(rest, jnp.tanh(pre)) if rest else pre)
        pres = ppl.sample(("present", i), tfd.Bernoulli(logits=dense_apply(phi["pres"], h)[:, 0] + 1.0, dtype=jnp.float32))
        wl, ws = jnp.split(dense_apply(phi["where"], h), 2, -1)
        where = ppl.sample(("where", i), nd.Normal(wl, jax.nn.softplus(ws - 1.0) + 1e-3).to_event(1))
        glimpse = jax.vmap(extract, (0, 0, None))(x.reshape(b, c, c), where, g).reshape(b, -1)
        ql, qs = jnp.split(mlp_apply(phi["what"], jnp.concatenate([glimpse, h], -1)), 2, -1)
        what = ppl.sample(("what", i), nd.Normal(ql, jax.nn.softplus(qs + 0.5413) + 1e-3).to_event(1))
        alive = alive * pres[:, None]
        out.append((pres, where, what))
    return out


def model_args(params, x):
    return (params["theta"], x)


def guide_args(params, x):
    return (params["phi"], x)


def programs(cfg: AIRConfig = AIRConfig()):
    """``(model, guide)`` for ``cfg`` (the module-level ones use the default ``AIRConfig()``).

    The network sizes are read from the parameters; ``max_steps``, ``obs_scale`` and
    ``prior_present`` come from ``cfg`` only, so a model trained with a non-default config must
    be scored with the same config (every function here takes it).
    """
    if cfg == AIRConfig():
        return model, guide
    return functools.partial(model, cfg=cfg), functools.partial(guide, cfg=cfg)


def check_config(params, x, cfg: AIRConfig) -> None:
    """Raise ``ValueError`` when ``params`` or canvases ``x`` do not have ``cfg``'s sizes."""
    g, c, zw = _cfg_of(params["theta"], x)
    got = {"canvas": c, "glimpse": g, "z_what": zw, "hidden": params["phi"]["rnn"][0]["b"].shape[0]}
    bad = {k: v for k, v in got.items() if getattr(cfg, k) != v}
    if bad:
        raise ValueError(f"AIR: the parameters / canvases have {bad} but the AIRConfig says "
                         f"{ {k: getattr(cfg, k) for k in bad} }; pass the config they were made with")


def _one(key, params, x, cfg):
    """One guide draw for one canvas: (log weight, count, per-step where)."""
    mdl, gde = programs(cfg)
    tr = ppl.simulate(gde)(key, params["phi"], x[None])
    lp, _ = ppl.assess(mdl)(tr.choices, params["theta"], x[None])
    pres = jnp.stack([p[0] for p, _, _ in tr.retval])
    where = jnp.stack([w[0] for _, w, _ in tr.retval])
    return lp - tr.score, jnp.sum(jnp.cumprod(pres)), where


@functools.partial(jax.jit, static_argnames="cfg")
def infer(key, params, x, cfg: AIRConfig = AIRConfig()):
    """``(log_weights (N,), counts (N,), where (N, T, 3))`` from one guide draw per canvas."""
    check_config(params, x, cfg)
    one = functools.partial(_one, cfg=cfg)
    return jax.vmap(one, (0, None, 0))(jax.random.split(key, x.shape[0]), params, x)


def elbo(key, params, x, cfg: AIRConfig = AIRConfig()):
    return jnp.mean(infer(key, params, x, cfg)[0])


def count_accuracy(key, params, x, counts, cfg: AIRConfig = AIRConfig()):
    return jnp.mean(infer(key, params, x, cfg)[1] == counts)


def init_baseline(key, cfg: AIRConfig = AIRConfig()) -> list:
    """A learned baseline ``b(x)``: an MLP canvas -> hidden -> 1, starting at 0 (``params["baseline"]``)."""
    return mlp_init(key, [cfg.canvas**2, cfg.hidden, 1], final_scale=0.0)


def make_loss(estimators=None, cfg: AIRConfig = AIRConfig()):
    """``loss(key, params, batch)`` for ``fit``: minus the ELBO, one objective per canvas, averaged.

    ``estimators``: the presence mapping (a preset). If ``params`` has a ``"baseline"`` entry
    (:func:`init_baseline`), each :class:`Baseline` in ``estimators`` gets the value
    ``b(x)`` for its canvas (a function of the data only, so the estimate stays unbiased; ADEV
    holds it constant), and ``b`` is trained towards the ELBO by the squared error
    ``(ELBO - b(x))^2 / 2``, whose gradient is added but whose value is not: the loss reported
    is minus the ELBO either way.
    """
    estimators = dict(estimators or {})
    objective = O.elbo(*programs(cfg))

    def one(key, params, xi):
        xi = xi[None]
        if "baseline" not in params:
            E = expectation(objective, estimators=estimators)
            return E.estimate(key, (params["theta"], xi), (params["phi"], xi)), 0.0
        b = mlp_apply(params["baseline"], xi)[0, 0]
        est = {a: dataclasses.replace(e, value=jax.lax.stop_gradient(b)) if isinstance(e, Baseline) else e
               for a, e in estimators.items()}
        v = expectation(objective, estimators=est).estimate(key, (params["theta"], xi), (params["phi"], xi))
        return v, 0.5 * (jax.lax.stop_gradient(v) - b) ** 2

    def loss(key, params, batch):
        check_config(params, batch, cfg)
        v, sq = jax.vmap(one, (0, None, 0))(jax.random.split(key, batch.shape[0]), params, batch)
        sq = jnp.mean(sq)
        return -jnp.mean(v) + (sq - jax.lax.stop_gradient(sq))

    return loss


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
    :func:`make_loss` sets to the learned ``b(x)`` when ``params`` has one (without it, ``b = 0``
    and the preset is plain ``"score"``).
    """
    from ppl.transforms import ScoreFunction

    return {"score": {"present": ScoreFunction()},
            "score-baseline": {"present": Baseline(ScoreFunction())},
            "enum": {"present": Enum()}, "mvd": {"present": MVD()},
            "hybrid": hybrid_estimators()}


def plot_boxes(path, params, xs, counts, cfg: AIRConfig = AIRConfig()):
    from ._plots import boxes

    _, n, where = infer(jax.random.key(0), params, xs, cfg)
    c = cfg.canvas
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
