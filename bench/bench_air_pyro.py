"""AIR training speed, ppl against Pyro (TraceGraph_ELBO, TraceEnum_ELBO): same data, sizes, init.

    .venv/bin/python bench/bench_air_pyro.py [--steps 200] [--segment 25] [--batch 32] [--quick]

Pyro runs in subprocesses from a separate venv (torch and Pyro are benchmark-only and never go
into ``.venv`` or the project's dependencies); create it once:

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0 pyro-ppl numpy

Setup: 1000 canvases 16x16 with 0-3 digits from ppl's ``AIR.make_canvases`` (saved to a
temporary .npz that the Pyro side reads), ppl's ``AIR`` configuration and initial parameters (Pyro
loads the same values), Adam(1e-3), minibatches of ``--batch``, ``--segment + --steps`` steps
per system, float32. Rows, in groups:

- ppl ``ScoreFunction`` (no baseline) | Pyro ``TraceGraph_ELBO`` (no baseline) and
  ``JitTraceGraph_ELBO``;
- ppl ``"score-baseline"`` (ScoreFunction with the learned baseline ``b(x)`` of ``ppl.models.losses.make_loss``)
  | ``TraceGraph_ELBO`` with the same MLP, same initial values, as each presence site's
  ``baseline_value`` (Pyro trains it by its own squared-error baseline loss);
- ppl ``Enum`` | ``TraceEnum_ELBO`` with the guide's presence sites enumerated in parallel, and
  ``JitTraceEnum_ELBO``;
- ppl ``MVD`` and the hybrid (Enum step 0, MVD steps 1-2) | ``TraceGraph_ELBO`` again (Pyro has
  no MVD; its sampled presence gradient is the counterpart).

Timing, interleaved so that load from other processes hits both systems alike: ppl's ``fit``
runs chunks of ``--segment`` steps; after each chunk, a callback has every Pyro process of the
group run ``--segment`` steps. The first segment of each system is warmup (ppl: compilation,
reported apart as first chunk minus a steady chunk; Pyro: its first step minus a steady step,
larger for the ``Jit`` objectives, which trace then). The time per 100 steps is the median over
the remaining segments (robust to another process's burst); the ratio is Pyro over the ppl row
of its group.

Threads: torch gets 2 (the machine's cores; ``--pyro-threads``). With 2 threads, torch slows
down many-fold (about 30x measured) as soon as another process competes for the 2 cores; on an
idle machine 1 and 2 threads time the same. On a shared machine, ``--pyro-threads 1`` keeps the
Pyro rows meaningful; look at the load column either way.

Before training, a check: per-example ``log p(x, z)`` and ``log q(z | x)`` of both programs at
the same choices (drawn by ppl's guide) must agree to float32 rounding (else the script stops:
``models/air.py`` changed and ``bench/_air_pyro.py`` must follow). After training, every
system's parameters are scored by the same code (ppl's ``AIR.elbo``, four guide draws per
canvas with the same keys; ``AIR.count_accuracy``) on 300 held-out canvases. Nothing here is
asserted in tests.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ppl
from ppl.models import air, data
from ppl.models.losses import make_loss
from ppl.transforms import expectation
from ppl.transforms import objectives as O
from ppl.transforms.fit import fit

HERE = os.path.dirname(os.path.abspath(__file__))
VENV_PY = os.path.join(HERE, "..", ".venv-bench", "bin", "python")
PYRO_SCRIPT = os.path.join(HERE, "_air_pyro.py")
AIR = air.AIR()  # the benchmark's AIR: the default configuration


def _require_venv():
    if not os.path.exists(VENV_PY):
        sys.exit("bench_air_pyro: the Pyro venv .venv-bench is missing. Create it from the repository root:\n"
                 "    python3 -m venv .venv-bench\n"
                 "    .venv-bench/bin/pip install torch==2.13.0 pyro-ppl numpy\n"
                 "(torch comes from the local wheel in /opt/wheels when PIP_FIND_LINKS points there).")


def _flatten(params):
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) for path, _ in flat]
    return names, [np.asarray(v) for _, v in flat], treedef


def _per_example_densities(key, params, x):
    """ppl's guide draws choices per canvas; returns (choices by "name/step", log p, log q)."""
    def one(k, xi):
        tr = ppl.simulate(AIR.guide)(k, params["phi"], xi[None])
        lp, _ = ppl.assess(AIR.model)(tr.choices, params["theta"], xi[None])
        return tr.choices, lp, tr.score

    ch, lp, lq = jax.vmap(one)(jax.random.split(key, x.shape[0]), x)
    ch = {"/".join(map(str, k)): np.asarray(v)[:, 0] for k, v in ch.items()}  # (N, 1, ...) -> (N, ...)
    return ch, np.asarray(lp), np.asarray(lq)


class _Pyro:
    """One Pyro training process (``_air_pyro.py serve``), driven a segment at a time."""

    def __init__(self, objective, npz, a):
        self.objective = objective
        self.proc = subprocess.Popen([VENV_PY, PYRO_SCRIPT, "serve", "--data", npz, "--objective", objective,
                                      "--batch", str(a.batch), "--threads", str(a.pyro_threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()
        self.times, self.elbo = [], []

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench_air_pyro: the Pyro process ({self.objective}) ended early with code "
                               f"{self.proc.wait()}; its error is printed above.")
        return json.loads(line)

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def segment(self, n):
        r = self.ask(f"steps {n}")
        self.times.append(r["times"])
        self.elbo += r["elbo"]

    def finish(self, path):
        self.ask(f"save {path}")
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()


def _summary(segment_times, segment, elbo, first_step=None, step_median=None):
    """s per 100 steps (median over the segments after the first), compile-like warmup, ELBO trace."""
    steady = float(np.median(segment_times[1:]))
    if first_step is None:  # ppl: first chunk minus a steady chunk
        warm = float(segment_times[0] - steady)
    else:  # Pyro: first step minus a steady step
        warm = float(first_step - step_median)
    return {"per100": 100 * steady / segment, "compile": warm, "elbo": np.asarray(elbo)}


def _group(est, params0, pyro_objectives, x, npz, tmp, m, a):
    """ppl's fit with the group's Pyro processes stepping between its chunks."""
    procs = [_Pyro(o, npz, a) for o in pyro_objectives]
    chunks, mark = [], [0.0]

    def between_chunks(step, state, losses):
        chunks.append(time.perf_counter() - mark[0])
        for pr in procs:
            pr.segment(a.segment)
        mark[0] = time.perf_counter()

    mark[0] = time.perf_counter()
    loss = make_loss(expectation(O.elbo(m.model, m.guide), estimators=est))
    r = fit(loss, optax.adam(1e-3), params0, key=jax.random.key(2),
            num_steps=a.segment + a.steps, data=x, batch_size=a.batch, chunk=a.segment, progress=False,
            callbacks=[between_chunks], compiler_options=air.compiler_options() if a.fused_dots else None)
    out = [(r.params, _summary(chunks, a.segment, -np.asarray(r.history)))]
    for pr in procs:
        path = os.path.join(tmp, f"params-{pr.objective}.npz")
        pr.finish(path)
        steps = np.concatenate(pr.times[1:])
        s = _summary([sum(t) for t in pr.times], a.segment, pr.elbo, pr.times[0][0], np.median(steps))
        s["info"] = pr.info
        loaded = np.load(path)
        out.append((loaded, s))
    return out


def _evaluate(params, x_eval, c_eval, keys=4):
    """Mean single-sample ELBO per canvas (over ``keys`` guide draws) and count accuracy, ppl's code."""
    e = np.mean([float(AIR.elbo(jax.random.key(100 + i), params, x_eval)) for i in range(keys)])
    acc = float(AIR.count_accuracy(jax.random.key(200), params, x_eval, c_eval))
    return e, acc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="timed steps per system (a multiple of --segment)")
    ap.add_argument("--segment", type=int, default=25,
                    help="steps per interleaved segment; each system's first segment is untimed warmup")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pyro-threads", type=int, default=2,
                    help="torch.set_num_threads on the Pyro side (see the module docstring before changing it)")
    ap.add_argument("--pyro-jit", action=argparse.BooleanOptionalAction, default=True,
                    help="also time Pyro's JitTraceGraph_ELBO / JitTraceEnum_ELBO (torch.jit traced)")
    ap.add_argument("--ppl-only-rows", action=argparse.BooleanOptionalAction, default=True,
                    help="the MVD and hybrid groups (against TraceGraph_ELBO)")
    ap.add_argument("--fused-dots", action=argparse.BooleanOptionalAction, default=True,
                    help="compile ppl's step with air.compiler_options() (on CPU: fit.CPU_FUSED_DOTS, what the "
                         "main command uses for AIR)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 segments of 5 steps, small evaluation set")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.segment = 10, 5
    if a.steps % a.segment or a.steps < 2 * a.segment:
        sys.exit(f"bench_air_pyro: --steps ({a.steps}) must be a multiple of --segment ({a.segment}), at least two")
    _require_venv()

    ds = data.load("digits")
    m = AIR
    x, _ = m.make_canvases(jax.random.key(0), ds.images(ds.x_train), 1000)
    x_eval, c_eval = m.make_canvases(jax.random.key(3), ds.images(ds.x_test), 60 if a.quick else 300)
    p0 = m.init_params(jax.random.key(1))
    p_base = {**p0, "baseline": m.init_baseline(jax.random.key(5))}
    names, values, treedef = _flatten(p_base)
    ch, lp, lq = _per_example_densities(jax.random.key(4), p0, x_eval[:16])
    presets = air.estimator_presets()
    groups = [("ScoreFunction", presets["score"], p0,
               [("TraceGraph_ELBO", "tracegraph")] + [("JitTraceGraph_ELBO", "jit-tracegraph")] * a.pyro_jit),
              ("Score + baseline b(x)", presets["score-baseline"], p_base,
               [("TraceGraph + b(x)", "tracegraph-baseline")]),
              ("Enum", presets["enum"], p0,
               [("TraceEnum_ELBO", "traceenum")] + [("JitTraceEnum_ELBO", "jit-traceenum")] * a.pyro_jit)]
    if a.ppl_only_rows:
        groups += [("MVD", presets["mvd"], p0, [("TraceGraph_ELBO", "tracegraph")]),
                   ("hybrid", presets["hybrid"], p0, [("TraceGraph_ELBO", "tracegraph")])]

    with tempfile.TemporaryDirectory(prefix="ppl-bench-air-pyro-") as tmp:
        npz = os.path.join(tmp, "air.npz")
        np.savez(npz, x=np.asarray(x), param_names=np.array(names), check_x=np.asarray(x_eval[:16]),
                 **{f"cfg_{k}": v for k, v in dataclasses.asdict(m).items()},
                 **{f"param_{j}": v for j, v in enumerate(values)}, **{f"choice:{k}": v for k, v in ch.items()})
        out = os.path.join(tmp, "check.json")
        subprocess.run([VENV_PY, PYRO_SCRIPT, "check", "--data", npz, "--out", out], check=True)
        with open(out) as f:
            chk = json.load(f)
        dp = np.max(np.abs(np.asarray(chk["log_p"]) - lp))
        dq = np.max(np.abs(np.asarray(chk["log_q"]) - lq))
        print(f"same densities: max |log p ppl - Pyro| = {dp:.2e} (|log p| ~ {np.mean(np.abs(lp)):.0f}), "
              f"max |log q ppl - Pyro| = {dq:.2e}, over 16 canvases at the same choices")
        if dp > 1e-3 + 1e-5 * np.max(np.abs(lp)) or dq > 1e-3 + 1e-5 * np.max(np.abs(lq)):
            sys.exit("bench_air_pyro: the Pyro twin computes different densities from ppl.models.air "
                     "(models/air.py changed?); update bench/_air_pyro.py to match before timing.")

        e0, acc0 = _evaluate(p0, x_eval, c_eval)
        print(f"{a.steps} timed steps after {a.segment} untimed, batch {a.batch}, segments of {a.segment}; "
              f"initial held-out ELBO {e0:.1f}, count accuracy {acc0:.2f}\n")
        head = (f"{'system':5s} {'objective / estimator':22s} {'s/100 steps':>11s} {'Pyro/ppl':>8s} "
                f"{'warmup s':>8s} {'train ELBO first->last 20':>26s} {'held-out ELBO':>13s} "
                f"{'count acc':>9s} {'load 1m':>7s}")
        print(head)
        print("-" * len(head), flush=True)
        info = None
        for label, est, params0, pyro_rows in groups:
            load0 = os.getloadavg()[0]
            results = _group(est, params0, [o for _, o in pyro_rows], x, npz, tmp, m, a)
            load = f"{load0:.1f}-{os.getloadavg()[0]:.1f}"
            ref = results[0][1]["per100"]
            for (system, lab), (params, r) in zip([("ppl", label)] + [("pyro", l) for l, _ in pyro_rows], results):
                if system == "pyro":
                    info = r["info"]
                    params = jax.tree_util.tree_unflatten(
                        treedef, [jnp.asarray(params[f"param_{j}"]) for j in range(len(names))])
                ev, acc = _evaluate(params, x_eval, c_eval)
                n = min(20, len(r["elbo"]) // 2)
                ratio = f"{r['per100'] / ref:8.1f}" if system == "pyro" else f"{'':8s}"
                print(f"{system:5s} {lab:22s} {r['per100']:11.2f} {ratio} {r['compile']:8.1f} "
                      f"{np.mean(r['elbo'][:n]):12.1f} ->{np.mean(r['elbo'][-n:]):11.1f} {ev:13.1f} {acc:9.2f} "
                      f"{load:>7s}", flush=True)
    if info is not None:
        print(f"\nPyro side: torch {info['torch']}, Pyro {info['pyro']}, {info['threads']} threads, validation off. "
              f"ppl: jax {jax.__version__}, compiler options "
              f"{(air.compiler_options() if a.fused_dots else None) or 'none'}.")


if __name__ == "__main__":
    main()
