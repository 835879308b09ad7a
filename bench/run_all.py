"""Run every benchmark in bench/ one after another and say how each ended (``make bench``).

    .venv/bin/python bench/run_all.py            # quick configurations (smoke runs, minutes)
    .venv/bin/python bench/run_all.py --full     # the recorded configurations (long)
    .venv/bin/python bench/run_all.py --list     # what would run, with its command
    .venv/bin/python bench/run_all.py --only cbo,adev

Every ``bench/bench_*.py`` is found by name, so a new benchmark is included without editing
this file. The arguments of a quick run come from :data:`QUICK` where a script is listed there,
else ``--quick`` where the script accepts it; a script with neither runs only under ``--full``.
Benchmarks that need something this machine may lack (the Pyro venv ``.venv-bench``, the MNIST
files) are skipped with the reason. The numbers each script prints are the results; the
recorded ones, with their commands, are in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

#: Quick arguments of the scripts that have no ``--quick`` flag of their own.
QUICK = {
    "adev": [],
    "vae": ["--rounds", "3", "--reps", "3", "--batches", "64"],
    "air": ["--steps", "20"],
}


def _needs(name):
    """Why ``name`` cannot run here, or None."""
    if name == "air_pyro" and not (ROOT / ".venv-bench" / "bin" / "python").exists():
        return "needs the Pyro venv .venv-bench (see bench/bench_air_pyro.py)"
    if name == "plate_mixture":
        try:
            import funsor  # noqa: F401  (NumPyro's TraceEnum_ELBO needs it)
        except ImportError:
            return "needs funsor for NumPyro's TraceEnum_ELBO (pip install -c constraints.txt -e '.[bench]')"
    if name == "vae_ll":
        mnist = os.environ.get("PPL_MNIST_DIR", str(ROOT.parent / "shared" / "data" / "mnist"))
        if not pathlib.Path(mnist).is_dir():
            return f"needs the MNIST files (PPL_MNIST_DIR or {mnist})"
    return None


def _quick_args(name, path):
    if name in QUICK:
        return QUICK[name]
    if '"--quick"' in path.read_text():
        return ["--quick"]
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the recorded configurations instead of quick ones")
    ap.add_argument("--list", action="store_true", help="print the commands and exit")
    ap.add_argument("--only", default=None, help="comma-separated names (bench_NAME.py)")
    a = ap.parse_args(argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    names = {p.stem[len("bench_"):]: p for p in scripts}
    if a.only:
        wanted = [s.strip() for s in a.only.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            ap.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(names)}")
        names = {w: names[w] for w in wanted}
    plan = []
    for name, path in names.items():
        args = [] if a.full else _quick_args(name, path)
        why = _needs(name) or (None if args is not None else "no quick configuration; run with --full")
        plan.append((name, [sys.executable, str(path.relative_to(ROOT)), *(args or [])], why))
    if a.list:
        for name, cmd, why in plan:
            print(f"{name:12s} {'SKIP: ' + why if why else ' '.join(cmd[1:])}")
        return 0
    results = []
    for name, cmd, why in plan:
        if why:
            print(f"\n== {name}: skipped ({why})", flush=True)
            results.append((name, "skipped", 0.0))
            continue
        print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT)
        results.append((name, "ok" if rc == 0 else f"FAILED (exit {rc})", time.perf_counter() - t0))
    print("\nbenchmark     result            seconds")
    for name, status, secs in results:
        print(f"{name:12s}  {status:16s}  {secs:7.1f}")
    return 1 if any(s.startswith("FAILED") for _, s, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
