"""M-FAC step time: ppl.backends.optim.scale_by_mfac (JAX) against the reference PyTorch code.

One step = insert a new gradient into the window of m gradients and return ``F^-1 g``: our
``scale_by_mfac(...).update`` (jit-compiled, state donated) against the reference's
``HInvFastUpMulti.update_mul`` (IST-DASLab/M-FAC ``optim.py``, CPU path: no CUDA kernel). The
reference is not part of ppl: the script loads ``optim.py`` at run time from a git mirror of
the reference repository (``--reference GIT_DIR``, default ``$PPL_MFAC_REFERENCE``), written to
a temporary folder. The reference factorizes with ``torch.lu(..., pivot=False)``, which PyTorch
implements only on CUDA; on CPU this script supplies that one call from a Cholesky factor
(the matrix ``m I + G G^T / damping`` is symmetric positive definite, so its unpivoted LU is
``L = C diag(C)^-1``, ``U = diag(C) C^T`` for the Cholesky factor ``C``; the reference keeps only
``U``), and its multi-GPU ``nn.parallel.parallel_apply`` (which needs an accelerator in
PyTorch 2.13) by the same calls made one after another (one "GPU", the CPU, so one call).
Everything else in the reference runs as written. Both in float32, both on all of this machine's cores (torch's thread count
is set to the CPU count; XLA:CPU uses them by default), both from a full window (m warm-up
steps first), the same gradients in the same order. The first step of each side is not timed.

    python bench/bench_mfac.py --reference /work/.mirror/IST-DASLab+M-FAC/repo   # recorded: d=1e5, m=32,256
    python bench/bench_mfac.py --quick                                          # smoke run (no torch needed)
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from ppl.backends.optim import scale_by_mfac


def load_reference(git_dir):
    """Import the reference ``optim.py`` from a git mirror (bare or not) without copying it here."""
    src = subprocess.run(["git", "--git-dir", git_dir, "show", "HEAD:optim.py"], check=True,
                         capture_output=True, text=True).stdout
    folder = tempfile.mkdtemp(prefix="mfac-ref-")
    path = os.path.join(folder, "mfac_reference_optim.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("mfac_reference_optim", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _order(n, m, steps):
    """Which gradient each step inserts: m + 1 untimed steps, then the timed ones."""
    return [k % n for k in range(m + 1 + steps)]


def exact_last_step(grads, m, damping, steps):
    """``F^-1 g`` of the last step in float64 (Woodbury in numpy over the final window)."""
    order = _order(len(grads), m, steps)
    window = grads[order[-m:]].astype(np.float64)
    g = window[-1]
    coef = np.linalg.solve(m * damping * np.eye(m) + window @ window.T, window @ g)
    return (g - coef @ window) / damping


def time_ours(grads, m, damping, steps):
    d = grads.shape[1]
    t = scale_by_mfac(num_grads=m, damping=damping)
    update = jax.jit(t.update, donate_argnums=(1,))
    state = t.init(jnp.zeros(d, jnp.float32))
    gs = [jnp.asarray(g) for g in grads]
    order = _order(len(gs), m, steps)
    for i in order[:m + 1]:  # fill the window, compile
        u, state = update(gs[i], state)
    jax.block_until_ready(u)
    times = []
    for i in order[m + 1:]:
        t0 = time.perf_counter()
        u, state = update(gs[i], state)
        jax.block_until_ready(u)
        times.append(time.perf_counter() - t0)
    return np.median(times), np.asarray(u)


def _unpivoted_lu_on_cpu(torch):
    """``torch.lu(A, pivot=False)`` for symmetric positive definite ``A`` on CPU, from Cholesky."""
    original = torch.lu

    def lu(A, pivot=True, get_infos=False):
        if pivot or A.is_cuda:
            return original(A, pivot=pivot, get_infos=get_infos)
        c = torch.linalg.cholesky(A)
        diag = torch.diagonal(c)
        packed = torch.tril(c / diag[None, :], -1) + diag[:, None] * c.t()
        pivots = torch.arange(1, A.shape[-1] + 1, dtype=torch.int32)
        return (packed, pivots, torch.zeros((), dtype=torch.int32)) if get_infos else (packed, pivots)

    return original, lu


def time_reference(ref, grads, m, damping, steps):
    import torch

    original, lu = _unpivoted_lu_on_cpu(torch)
    original_apply = torch.nn.parallel.parallel_apply
    torch.lu = lu
    torch.nn.parallel.parallel_apply = lambda fns, inputs: [f(x) for f, x in zip(fns, inputs)]
    try:
        return _time_reference(ref, grads, m, damping, steps)
    finally:
        torch.lu = original
        torch.nn.parallel.parallel_apply = original_apply


def _time_reference(ref, grads, m, damping, steps):
    import torch

    d = grads.shape[1]
    dev = torch.device("cpu")
    hinv = ref.HInvFastUpMulti(torch.zeros((m, d), dtype=torch.float32), dev=dev, gpus=[dev], damp=damping)
    gs = [torch.from_numpy(np.ascontiguousarray(g)) for g in grads]
    order = _order(len(gs), m, steps)
    with torch.no_grad():
        for i in order[:m + 1]:
            u = hinv.update_mul(gs[i])
        times = []
        for i in order[m + 1:]:
            t0 = time.perf_counter()
            u = hinv.update_mul(gs[i])
            times.append(time.perf_counter() - t0)
    return np.median(times), u.numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="100000", help="comma-separated d (default 100000)")
    ap.add_argument("--ms", default="32,256", help="comma-separated window sizes m (default 32,256)")
    ap.add_argument("--damping", type=float, default=1e-5)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration (median reported)")
    ap.add_argument("--reference", default=os.environ.get("PPL_MFAC_REFERENCE"),
                    help="git directory of a mirror of IST-DASLab/M-FAC (env PPL_MFAC_REFERENCE)")
    ap.add_argument("--quick", action="store_true", help="d=10000, m=32, 3 steps; torch side only if available")
    a = ap.parse_args(argv)
    if a.quick:
        a.dims, a.ms, a.steps = "10000", "32", 3
    ref = None
    try:
        import torch

        torch.set_num_threads(os.cpu_count())
        if a.reference:
            ref = load_reference(a.reference)
        else:
            print("no --reference / PPL_MFAC_REFERENCE: timing ours only")
    except ImportError:
        print("torch is not installed: timing ours only (pip install torch for the reference side)")
    print(f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} CPU cores"
          + (f"; torch {torch.__version__} with {torch.get_num_threads()} threads" if ref else ""))
    print("error: max |u - u_exact| / max |u_exact| of the last step, u_exact in float64")
    print(f"{'d':>8} {'m':>5} {'ours ms/step':>13} {'reference ms/step':>18} {'ours/reference':>15} "
          f"{'ours error':>11} {'ref. error':>11}")
    rng = np.random.default_rng(0)
    for d in map(int, a.dims.split(",")):
        for m in map(int, a.ms.split(",")):
            grads = (rng.normal(size=(m + 8, d)) * rng.uniform(0.1, 2.0, size=(m + 8, 1))).astype(np.float32)
            exact = exact_last_step(grads, m, a.damping, a.steps)

            def err(u):
                return np.max(np.abs(u - exact)) / np.max(np.abs(exact))

            ours, u_ours = time_ours(grads, m, a.damping, a.steps)
            if ref is None:
                print(f"{d:>8} {m:>5} {ours * 1e3:>13.2f} {'-':>18} {'-':>15} {err(u_ours):>11.1e} {'-':>11}")
                continue
            theirs, u_ref = time_reference(ref, grads, m, a.damping, a.steps)
            print(f"{d:>8} {m:>5} {ours * 1e3:>13.2f} {theirs * 1e3:>18.2f} {ours / theirs:>15.2f} "
                  f"{err(u_ours):>11.1e} {err(u_ref):>11.1e}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
