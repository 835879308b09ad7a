"""Pyro twin of ``models/air.py`` for ``bench_air_pyro.py`` (run with ``.venv-bench/bin/python``).

Not part of the library: it imports torch and Pyro, which live only in the benchmark venv
(``python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 pyro-ppl numpy``).

The model and guide mirror ``ppl.models.air`` term for term. The sizes and constants (canvas,
glimpse, steps, z_what, obs_scale, prior_present) come from the ``AIR`` configuration the benchmark
writes into the .npz (hidden follows from the parameter shapes), so the twin follows
``models/air.py``; the benchmark's ``check`` catches any drift in the densities.

- model, step ``i``: ``present_i ~ Bernoulli(prior_present)``, ``where_i ~ N(0, I_3)``,
  ``what_i ~ N(0, I_Zw)``; ``alive *= present_i``; the object ``sigmoid(dec(what_i))`` (G x G)
  is written onto the canvas with ``alive`` as its weight (the count is the number of leading
  ones); ``x ~ N(canvas, obs_scale)``.
- spatial transformer: scale ``s = 0.5 exp(0.2 where_0)``, shift ``(0.6 where_1, 0.6 where_2)``
  in [-1, 1] coordinates, bilinear with zeros outside, pixel centres
  (``affine_grid``/``grid_sample`` with ``align_corners=False`` is exactly ppl's ``place`` /
  ``extract``).
- guide: ``h = tanh(W [x, h, where, what, alive] + b)`` (``alive``: the product of the earlier
  presences, the published guide's previous ``z_pres``); presence logits ``dense(h) + 1``; where
  ``N(loc, softplus(. - 1) + 1e-3)`` from ``dense(h)``; what from the MLP
  ``[glimpse(x, where), h] -> hidden -> 2 Zw`` with scale ``softplus(. + 0.5413) + 1e-3``.

Parameters are plain tensors in Pyro's param store under ppl's names (loaded from the .npz the
benchmark writes, so both systems start from the same initialization) and the layouts are
ppl's (``x @ w + b``).

Objectives: ``tracegraph`` is ``TraceGraph_ELBO`` with no baseline (ppl's ``"score"`` preset
has none either). Pyro multiplies each presence score by the costs that provenance tracking
finds downstream of it (``log p(x | ...) + log p(present_i) - log q(present_i)``), ppl's
``ScoreFunction`` by the whole per-canvas ELBO: the same work per step, a different variance.
``tracegraph-baseline`` gives each presence site the baseline value ``b(x)``, ppl's
``init_baseline`` MLP (canvas -> hidden -> 1, same initial values), trained by Pyro's
squared-error baseline loss towards each site's downstream cost (ppl's ``"score-baseline"``
trains the same MLP towards the per-canvas ELBO). ``traceenum`` is ``TraceEnum_ELBO`` with the
three presence sites of the guide enumerated in parallel (``max_plate_nesting=1``; the model's
``alive`` and canvas gain one enumeration dimension per step), the analogue of ppl's ``Enum``.
The ``jit-`` variants use Pyro's ``JitTraceGraph_ELBO`` / ``JitTraceEnum_ELBO``.

Commands (both read ``--data FILE.npz``):

- ``serve``: SVI with Adam(1e-3) on minibatches of ``--batch``, driven over stdin/stdout by the
  benchmark (``steps N`` -> per-step wall times and ELBOs per example; ``save PATH``; ``quit``).
- ``check``: per-example ``log p(x, z)`` and ``log q(z | x)`` at choices given in the .npz
  (written by ppl's guide), to show the two programs are the same densities (JSON to ``--out``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.infer import SVI, JitTraceEnum_ELBO, JitTraceGraph_ELBO, TraceEnum_ELBO, TraceGraph_ELBO

# ppl's AIR configuration fields, set from the .npz by _load (defaults: ppl's at the time of writing)
C = {"canvas": 16, "glimpse": 8, "max_steps": 3, "z_what": 6, "obs_scale": 0.3, "prior_present": 0.3}


def _layers(prefix):
    """The dense layers ``prefix/0``, ``prefix/1``, ... (or the one layer ``prefix``) as (w, b) pairs."""
    if f"{prefix}/w" in _NAMES:
        return [(pyro.param(f"{prefix}/w"), pyro.param(f"{prefix}/b"))]
    out, i = [], 0
    while f"{prefix}/{i}/w" in _NAMES:
        out.append((pyro.param(f"{prefix}/{i}/w"), pyro.param(f"{prefix}/{i}/b")))
        i += 1
    return out


def _mlp(layers, x):
    for w, b in layers[:-1]:
        x = torch.tanh(x @ w + b)
    w, b = layers[-1]
    return x @ w + b


def _affine(where):
    return 0.5 * torch.exp(0.2 * where[..., 0]), 0.6 * where[..., 1], 0.6 * where[..., 2]


def _sample_grid(image, a, shift_x, shift_y, size):
    """``image`` (..., H, W) read at ``a * u + shift`` for the pixel centres ``u`` of a size x size
    grid; leading axes (batch, and enumeration under TraceEnum_ELBO) broadcast and are flattened."""
    lead = torch.broadcast_shapes(image.shape[:-2], a.shape)
    out = _sample_grid_flat(image.expand(lead + image.shape[-2:]).reshape((-1,) + image.shape[-2:]),
                            *(v.expand(lead).reshape(-1) for v in (a, shift_x, shift_y)), size)
    return out.reshape(lead + out.shape[-2:])


def _sample_grid_flat(image, a, shift_x, shift_y, size):
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([a, zero, shift_x], -1), torch.stack([zero, a, shift_y], -1)], -2)
    grid = F.affine_grid(theta, (image.shape[0], 1, size, size), align_corners=False)
    return F.grid_sample(image[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def place(glimpse, where):
    """(B, G, G) glimpses written onto (B, C, C) canvases: ppl's ``air.place``."""
    s, tx, ty = _affine(where)
    return _sample_grid(glimpse, 1.0 / s, -tx / s, -ty / s, C["canvas"])


def extract(image, where):
    """(B, G, G) glimpses read from (B, C, C) images: ppl's ``air.extract``."""
    s, tx, ty = _affine(where)
    return _sample_grid(image, s, tx, ty, C["glimpse"])


def model(x):
    b, c, g, zw = x.shape[0], C["canvas"], C["glimpse"], C["z_what"]
    dec = _layers("theta/dec")
    p = C["prior_present"]
    prior = torch.tensor(np.log(p) - np.log1p(-p), dtype=x.dtype)
    with pyro.plate("data", b):
        canvas = x.new_zeros((b, c, c))
        alive = x.new_ones((b,))
        for i in range(C["max_steps"]):
            pres = pyro.sample(f"present/{i}", dist.Bernoulli(logits=prior.expand(b)))
            where = pyro.sample(f"where/{i}", dist.Normal(x.new_zeros((b, 3)), 1.0).to_event(1))
            what = pyro.sample(f"what/{i}", dist.Normal(x.new_zeros((b, zw)), 1.0).to_event(1))
            alive = alive * pres  # under enumeration it gains one enumeration dimension per step
            glimpse = torch.sigmoid(_mlp(dec, what)).unflatten(-1, (g, g))
            canvas = canvas + alive[..., None, None] * place(glimpse, where)
        loc = canvas.reshape(canvas.shape[:-2] + (c * c,))
        pyro.sample("x", dist.Normal(loc, C["obs_scale"]).to_event(1), obs=x)


def _cat(parts):
    """Concatenate along the last axis after broadcasting the leading (enumeration, batch) axes."""
    lead = torch.broadcast_shapes(*(q.shape[:-1] for q in parts))
    return torch.cat([q.expand(lead + q.shape[-1:]) for q in parts], -1)


def guide(x, presence="sample"):
    """``presence``: "sample" (score function), "baseline" (with the learned b(x)) or "enumerate"."""
    b, c, zw = x.shape[0], C["canvas"], C["z_what"]
    rnn, pres_l, where_l, what_l = (_layers(f"phi/{k}") for k in ("rnn", "pres", "where", "what"))
    infer = {}
    if presence == "enumerate":
        infer = {"enumerate": "parallel"}
    elif presence == "baseline":
        infer = {"baseline": {"baseline_value": _mlp(_layers("baseline"), x)[:, 0]}}
    with pyro.plate("data", b):
        h = x.new_zeros((b, rnn[0][1].shape[0]))
        where, what, alive = x.new_zeros((b, 3)), x.new_zeros((b, zw)), x.new_ones((b, 1))
        for i in range(C["max_steps"]):
            h = torch.tanh(_mlp(rnn, _cat([x, h, where, what, alive])))
            pres = pyro.sample(f"present/{i}", dist.Bernoulli(logits=_mlp(pres_l, h)[..., 0] + 1.0), infer=infer)
            alive = alive * pres[..., None]  # under enumeration it gains one enumeration dimension per step
            wl, ws = _mlp(where_l, h).chunk(2, -1)
            where = pyro.sample(f"where/{i}", dist.Normal(wl, F.softplus(ws - 1.0) + 1e-3).to_event(1))
            glimpse = extract(x.reshape(b, c, c), where).flatten(-2)
            ql, qs = _mlp(what_l, _cat([glimpse, h])).chunk(2, -1)
            what = pyro.sample(f"what/{i}", dist.Normal(ql, F.softplus(qs + 0.5413) + 1e-3).to_event(1))


_NAMES: set = set()


def _load(data):
    """The AIR configuration into ``C``; the parameters into a fresh param store; returns their names."""
    C.update({k: type(v)(data[f"cfg_{k}"]) for k, v in C.items()})
    pyro.clear_param_store()
    names = [str(n) for n in data["param_names"]]
    for j, n in enumerate(names):
        pyro.param(n, torch.tensor(np.asarray(data[f"param_{j}"]), dtype=torch.float32))
    _NAMES.clear()
    _NAMES.update(names)
    return names


def _objective(name):
    return {"tracegraph": lambda: TraceGraph_ELBO(), "tracegraph-baseline": lambda: TraceGraph_ELBO(),
            "traceenum": lambda: TraceEnum_ELBO(max_plate_nesting=1),
            "jit-tracegraph": lambda: JitTraceGraph_ELBO(),
            "jit-traceenum": lambda: JitTraceEnum_ELBO(max_plate_nesting=1)}[name]()


def serve(a, data):
    """Train on request, so the benchmark can interleave Pyro's steps with ppl's.

    Reads commands from stdin, answers each with one JSON line on stdout: ``steps N`` runs N
    SVI steps (minibatches of ``--batch`` from per-epoch permutations) and answers their wall
    times and ELBOs per example; ``save PATH`` writes the parameters (.npz, ppl's names);
    ``quit`` ends. The first line written says it is ready.
    """
    names = _load(data)
    x = torch.tensor(np.asarray(data["x"]), dtype=torch.float32)
    n = x.shape[0]
    presence = ("enumerate" if a.objective.endswith("traceenum") else
                "baseline" if a.objective.endswith("baseline") else "sample")
    svi = SVI(model, lambda xb: guide(xb, presence), pyro.optim.Adam({"lr": 1e-3}), loss=_objective(a.objective))
    rng = np.random.default_rng(a.seed)
    per_epoch, perm, t = n // a.batch, None, 0

    channel, sys.stdout = sys.stdout, sys.stderr  # stdout carries the replies only

    def reply(obj):
        channel.write(json.dumps(obj) + "\n")
        channel.flush()

    reply({"ready": True, "torch": torch.__version__, "pyro": pyro.__version__, "threads": torch.get_num_threads()})
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "steps":
            times, elbos = [], []
            for _ in range(int(arg[0])):
                if t % per_epoch == 0:
                    perm = rng.permutation(n)
                j = t % per_epoch
                xb = x[perm[j * a.batch:(j + 1) * a.batch]]
                t0 = time.perf_counter()
                loss = svi.step(xb)
                times.append(time.perf_counter() - t0)
                elbos.append(-loss / a.batch)
                t += 1
            reply({"times": times, "elbo": elbos})
        elif cmd == "save":
            np.savez(arg[0], param_names=np.array(names),
                     **{f"param_{k}": pyro.param(nm).detach().numpy() for k, nm in enumerate(names)})
            reply({"saved": arg[0]})
        elif cmd == "quit":
            return
        else:
            raise ValueError(f"_air_pyro serve: unknown command {line!r} (steps N | save PATH | quit)")


def check(a, data):
    """Per-example log p(x, z) and log q(z | x) at the choices ppl's guide drew."""
    _load(data)
    x = torch.tensor(np.asarray(data["check_x"]), dtype=torch.float32)
    choices = {k[len("choice:"):]: torch.tensor(np.asarray(data[k]), dtype=torch.float32)
               for k in data.files if k.startswith("choice:")}
    with torch.no_grad():
        gt = poutine.trace(poutine.condition(guide, data=choices)).get_trace(x)
        mt = poutine.trace(poutine.condition(model, data=choices)).get_trace(x)
    per = {}
    for name, tr in (("log_q", gt), ("log_p", mt)):
        tr.compute_log_prob()
        sites = [s for n, s in tr.nodes.items() if s["type"] == "sample" and n != "data"]  # not the plate
        if name == "log_q" and {s["name"] for s in sites if s["is_observed"]} != set(choices):
            raise RuntimeError(f"check: the guide's sites {[s['name'] for s in sites]} are not exactly the "
                               f"given choices {sorted(choices)}")
        per[name] = sum(s["log_prob"] for s in sites).tolist()
    return per


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["serve", "check"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", help="check: where to write the JSON answer")
    ap.add_argument("--objective", default="tracegraph",
                    choices=["tracegraph", "tracegraph-baseline", "traceenum", "jit-tracegraph", "jit-traceenum"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(a.seed)
    pyro.set_rng_seed(a.seed)
    pyro.enable_validation(False)  # Pyro's fastest setting; the .npz inputs are known good
    # torch.jit tracing warns about constants and Python bools in Pyro's provenance tracking; the
    # program's structure does not depend on data, so the traces are valid.
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    data = np.load(a.data)
    if a.command == "serve":
        serve(a, data)
        return
    with open(a.out, "w") as f:
        json.dump(check(a, data), f)


if __name__ == "__main__":
    main()
