"""Mutation testing: plant one plausible bug at a time and check that a test catches it.

    .venv/bin/python tests/mutation/run.py                    # every listed mutation (minutes)
    .venv/bin/python tests/mutation/run.py --list             # the mutations and their tests
    .venv/bin/python tests/mutation/run.py --only mvd-exponential-negative-part,disarm-no-abs
    .venv/bin/python tests/mutation/run.py --slow             # also the tests marked slow
    .venv/bin/python tests/mutation/run.py --markdown out.md  # the table as Markdown too

The working tree (tracked files and untracked ones git does not ignore, so uncommitted work is
included) is copied to a scratch folder under the system's temporary directory; the working
tree itself is never modified. The copy is importable as ``ppl`` (its ``ppl/`` gets symbolic
links that mirror ``pyproject.toml``'s ``package-dir`` mapping; checked before anything runs). First the tests of every selected
mutation run unmutated (all must pass, else nothing is concluded); then each mutation is
applied alone (its text must occur exactly once in the file, else it is reported ``stale``),
its tests run with ``pytest -x``, and the file is restored. The table says, per mutation,
``killed`` (and the first failing test), ``survived``, ``stale`` or ``error``.

Each mutation lists the test files (and ``-k`` filter) that should catch it: a new estimator
or rule gets its own entries here, with the bug placed where tests are weakest (a parameter
near the value where the bug hides, a dropped constant, a sign). Not part of the test suite
(pytest collects ``test_*.py`` only); CPU-heavy: run it once, restricted with ``--only``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple  # pytest arguments: test files, optionally "-k", "expr"
    why: str = ""


MUTATIONS = [
    # --- autoguides and Predictive -------------------------------------------------------------
    Mutation("autoguide-mvn-marginal-not-conditional", "transforms/autoguide.py",
             "mean = mean + L[o:o + k, :o] @ eps", "mean = mean",
             ("tests/transforms/test_autoguide.py", "-k", "exact_posterior"),
             "AutoMultivariateNormal draws each site from its marginal, not its conditional on the sites before"),
    Mutation("autoguide-no-transform", "transforms/autoguide.py",
             "    return isinstance(t, ndt.IdentityTransform)", "    return True",
             ("tests/transforms/test_autoguide.py", "-k", "constrained or biject"),
             "autoguides skip biject_to: constrained sites guided on the unconstrained space"),
    Mutation("autoguide-lowrank-diag-not-squared", "transforms/autoguide.py",
             "return W @ W.T + jnp.diag(d ** 2)", "return W @ W.T + jnp.diag(d)",
             ("tests/transforms/test_autoguide.py", "-k", "constrained"),
             "AutoLowRankMultivariateNormal's diagonal added as d instead of d^2"),
    Mutation("predictive-guide-ignored", "transforms/predictive.py",
             "given = simulate(self.guide)(k1, *self.guide_args).choices", "given = {}",
             ("tests/transforms/test_predictive.py", "-k", "guide"),
             "Predictive with a guide samples the prior"),
    # --- the five that survived the suite before issue 20 --------------------------------------
    Mutation("mvd-exponential-negative-part", "estimators/mvd.py",
             "x + jax.random.exponential(key, x.shape, x.dtype) / lam)}",
             "x + jax.random.exponential(key, x.shape, x.dtype))}",
             ("tests/estimators/test_mvd_decomposition.py",),
             "MVD Exponential: p- = x + E' instead of x + E'/rate (right only at rate 1)"),
    Mutation("bernoulli-logits-zero", "ppl/distributions.py",
             "_CORRECTED = {nd.BernoulliLogits: _BernoulliLogits, nd.BinomialLogits: _BinomialLogits}",
             "_CORRECTED = {nd.BinomialLogits: _BinomialLogits}",
             ("tests/ppl/test_logits_at_zero.py",),
             "NumPyro's Bernoulli-logits density (gradient x instead of x - 1/2 at logits 0) comes back"),
    Mutation("scan-reverse-ignored", "transforms/adev.py",
             'order = range(length - 1, -1, -1) if p["reverse"] else range(length)',
             "order = range(length)",
             ("tests/transforms/test_adev_scan.py",),
             "ADEV unrolls lax.scan(reverse=True) first to last"),
    Mutation("checkpoint-in-place", "transforms/_checkpoint.py",
             "        with os.fdopen(fd, \"wb\") as f:\n            np.savez(f, **arrays)\n"
             "            f.flush()\n            os.fsync(f.fileno())\n        os.replace(tmp, path)\n",
             "        os.close(fd)\n        os.unlink(tmp)\n        with open(path, \"wb\") as f:\n"
             "            np.savez(f, **arrays)\n            f.flush()\n            os.fsync(f.fileno())\n",
             ("tests/transforms/test_checkpoint.py",),
             "the checkpoint is written in place instead of to a temporary file renamed over it"),
    Mutation("disarm-no-abs", "estimators/arm.py",
             "jax.nn.sigmoid(jnp.abs(a))", "jax.nn.sigmoid(a)",
             ("tests/estimators/test_unbiased.py", "-k", "DisARM"),
             "DisARM's weight sigmoid(a) instead of sigmoid(abs(a)) (right only for a >= 0)"),
    # --- more, for the code issue 20 and issue 13 added ----------------------------------------
    Mutation("binomial-logits-zero", "ppl/distributions.py",
             "_CORRECTED = {nd.BernoulliLogits: _BernoulliLogits, nd.BinomialLogits: _BinomialLogits}",
             "_CORRECTED = {nd.BernoulliLogits: _BernoulliLogits}",
             ("tests/ppl/test_logits_at_zero.py",),
             "NumPyro's Binomial-logits density comes back"),
    Mutation("logits-zero-bare-only", "ppl/distributions.py",
             "    out = _rewrap(d, _corrected)\n", "    out = d\n",
             ("tests/ppl/test_logits_at_zero.py",),
             "the correction is applied to a bare distribution only, not inside wrappers"),
    Mutation("checkpoint-narrow-except", "transforms/_checkpoint.py",
             "    except Exception as e:  # zip", "    except (ValueError, OSError, EOFError) as e:  # zip",
             ("tests/transforms/test_checkpoint.py",),
             "only the usual read errors become CheckpointError (zip version / encrypted flag escape)"),
    Mutation("checkpoint-no-history-check", "transforms/_checkpoint.py",
             "    if _HISTORY not in data:\n        raise _corrupted(path, \"no loss history\")\n", "",
             ("tests/transforms/test_checkpoint.py",),
             "an archive without loss history is not refused by name"),
    Mutation("checkpoint-stale-tmp-kept", "transforms/_checkpoint.py",
             "    _remove_stale_tmp(path)\n", "",
             ("tests/transforms/test_checkpoint.py",),
             "temporary files of killed writes are never removed"),
    Mutation("mvd-geometric-constant", "estimators/mvd.py",
             'return {"probs": (1 / p, x,', 'return {"probs": (1 / (1 - p), x,',
             ("tests/estimators/test_mvd_decomposition.py",),
             "MVD Geometric: constant 1/(1-p) instead of 1/p (right only at p = 1/2)"),
    Mutation("mvd-normal-scale-constant", "estimators/mvd.py",
             '"scale": (1 / scale,', '"scale": (1.0,',
             ("tests/estimators/test_mvd_decomposition.py",),
             "MVD Normal scale: constant 1 instead of 1/scale (right only at scale 1)"),
    # --- per-element estimation along plates (issue 15) -----------------------------------------
    Mutation("plate-slice-start-ignored", "transforms/_plate_split.py",
             'if p["start_indices"][x.axis] == 0 and p["limit_indices"][x.axis] == n and stride == 1:',
             "if True:",
             ("tests/transforms/test_plate_split.py",),
             "a slice along the plate's dimension (y_i depending on z_{i-1}) passes as per-element"),
    Mutation("plate-product-of-sums", "transforms/_plate_split.py",
             'if name in ("mul", "dot_general") and len(sums) == 1 or name == "div" and sums == [0]:',
             'if name in ("mul", "dot_general", "integer_pow") or name == "div" and sums == [0]:',
             ("tests/estimators/test_plate_estimators.py", "-k", "not_a_sum"),
             "a square / product of sums over the plate treated as linear (cross terms dropped)"),
    Mutation("plate-score-drops-shared-part", "transforms/_estimator.py",
             "jnp.tensordot(dlp, p + b / pe.n, axes=1)", "jnp.tensordot(dlp, p, axes=1)",
             ("tests/transforms/test_minibatch_plate.py", "-k", "score_function"),
             "the Rao-Blackwellized score function ignores the baseline (c / n) (unbiased, high variance)"),
    Mutation("plate-enum-no-weight-tangent", "estimators/enum.py",
             "        if dp is not None:\n            dout = [(a + jnp.tensordot(dp, po, axes=2))",
             "        if False:\n            dout = [(a + jnp.tensordot(dp, po, axes=2))",
             ("tests/estimators/test_plate_estimators.py", "-k", "enum"),
             "per-element Enum drops the derivative of the enumeration weights"),
    # --- f-divergence objectives and equilibrium propagation ------------------------------------
    Mutation("fdiv-log-q-not-stopped", "transforms/objectives.py",
             "density(guide, z, *sg(guide_args))", "density(guide, z, *guide_args)",
             ("tests/transforms/test_f_divergence.py", "-k", "quadrature"),
             "f_divergence keeps d log q / d phi at fixed z: a score term the f-distill gradient drops"),
    Mutation("fdiv-model-term-sign", "transforms/objectives.py",
             "- sg(div.r_fprime(u)) * log_p_theta", "+ sg(div.r_fprime(u)) * log_p_theta",
             ("tests/transforms/test_f_divergence.py", "-k", "quadrature"),
             "the target's parameters climb D_f instead of descending it"),
    Mutation("fdiv-normalize-ignored", "transforms/objectives.py",
             "h = h / jnp.mean(h)", "h = h",
             ("tests/transforms/test_f_divergence.py", "-k", "estimated"),
             "normalize=True leaves h unnormalized (the evidence no longer cancels)"),
    Mutation("ep-one-nudge-without-free-phase", "backends/equilibrium.py",
             "da = (self.solve(a_free, params, x, y, beta) - a_free) / beta",
             "da = self.solve(a_free, params, x, y, beta) / beta",
             ("tests/backends/test_equilibrium.py", "-k", "symmetric"),
             "N = 1 EP divides the nudged state by beta without subtracting the free phase"),
    Mutation("ep-batch-count-dropped", "backends/equilibrium.py",
             "g_dyn, = pull(-da / count)", "g_dyn, = pull(-da)",
             ("tests/backends/test_equilibrium.py", "-k", "symmetric"),
             "the recurrent part of the EP estimate is not divided by the number of per-example losses"),
    Mutation("homeostasis-j2-sign", "backends/equilibrium.py",
             "jnp.sum(je**2, axis=-1) - jnp.sum(e * jje, axis=-1)",
             "jnp.sum(je**2, axis=-1) + jnp.sum(e * jje, axis=-1)",
             ("tests/backends/test_equilibrium.py", "-k", "homeostatic or homeostasis"),
             "the homeostatic loss adds tr(J^2) instead of subtracting it"),
]


def _tree_files(root):
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def make_scratch(root, where=None):
    """Copy the working tree to a scratch folder; return ``(repo_copy, pythonpath)``.

    ``pyproject.toml`` maps ``ppl.transforms`` to ``transforms/`` (and so on), which an editable
    install resolves to the original tree; in the copy, ``ppl/transforms`` etc. are symbolic
    links to the copy's folders, so that ``import ppl`` from the copy's root (the current
    folder comes first on ``sys.path``) or from ``PYTHONPATH`` finds the copy throughout."""
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="ppl-mutants-", dir=where))
    repo = scratch / "repo"
    for f in _tree_files(root):
        dst = repo / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dst)
    # import ppl from the copy: package-dir maps ppl.transforms -> transforms/ etc.
    mapping = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = repo / mapping["ppl"]
    for pkg, folder in mapping.items():
        if pkg != "ppl":
            (top / pkg.split(".", 1)[1]).symlink_to(repo / folder, target_is_directory=True)
    return repo, repo


def _env(site):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def check_imports(repo, site):
    code = ("import ppl, ppl.transforms, ppl.estimators, os; "
            "print(os.path.realpath(ppl.__file__)); print(os.path.realpath(ppl.transforms.__file__))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=_env(site), capture_output=True, text=True)
    paths = out.stdout.split()
    real = os.path.realpath(repo)
    if out.returncode or len(paths) != 2 or not all(p.startswith(real + os.sep) for p in paths):
        raise SystemExit(f"the scratch copy is not the ppl that gets imported:\n{out.stdout}{out.stderr}")


def run_pytest(repo, site, args, slow, first_failure, timeout):
    cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider"]
    cmd += [] if slow else ["-m", "not slow"]
    cmd += ["-x"] if first_failure else []
    cmd += list(args)
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, cwd=repo, env=_env(site), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", [], time.monotonic() - t0, ""
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out.stdout, re.M)
    return out.returncode, failed, time.monotonic() - t0, out.stdout[-3000:] + out.stderr[-2000:]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated mutation names")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--slow", action="store_true", help="include tests marked slow")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (not recommended)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    a = ap.parse_args(argv)
    muts = MUTATIONS
    if a.only:
        names = a.only.split(",")
        unknown = set(names) - {m.name for m in MUTATIONS}
        if unknown:
            ap.error(f"unknown mutations {sorted(unknown)}; --list shows them")
        muts = [m for m in MUTATIONS if m.name in names]
    if a.list:
        for m in muts:
            print(f"{m.name:32s} {m.file:28s} {' '.join(m.tests)}\n{'':32s} {m.why}")
        return 0

    repo, site = make_scratch(ROOT)
    try:
        check_imports(repo, site)
        print(f"scratch copy: {repo}", flush=True)
        if not a.no_baseline:
            suites = []
            for m in muts:
                if m.tests not in suites:
                    suites.append(m.tests)
            for args in suites:
                rc, failed, secs, tail = run_pytest(repo, site, args, a.slow, False, a.timeout)
                print(f"baseline {' '.join(args)}: {'pass' if rc == 0 else 'FAIL'} ({secs:.0f} s)", flush=True)
                if rc != 0:
                    print(tail)
                    raise SystemExit("the unmutated tests do not pass: no mutation result would mean anything")
        rows = []
        for m in muts:
            path = repo / m.file
            original = path.read_text()
            count = original.count(m.old)
            if count != 1:
                rows.append((m, "stale", f"the text to mutate occurs {count} times in {m.file}", 0.0))
                print(f"{m.name}: stale", flush=True)
                continue
            path.write_text(original.replace(m.old, m.new))
            try:
                rc, failed, secs, tail = run_pytest(repo, site, m.tests, a.slow, True, a.timeout)
            finally:
                path.write_text(original)
            if rc == 0:
                result, by = "survived", ""
            elif rc == 1 and failed:
                result, by = "killed", failed[0]
            else:
                result, by = "error", f"pytest exit {rc}: " + (failed[0] if failed else tail.strip().splitlines()[-1:][0] if tail.strip() else "")
            rows.append((m, result, by, secs))
            print(f"{m.name}: {result} {by} ({secs:.0f} s)", flush=True)
    finally:
        if a.keep:
            print(f"kept {repo.parent}")
        else:
            shutil.rmtree(repo.parent, ignore_errors=True)

    table = ["| mutation | file | what it breaks | result | first failing test | s |",
             "|---|---|---|---|---|---|"]
    for m, result, by, secs in rows:
        why = m.why.replace("|", "\\|")
        table.append(f"| `{m.name}` | `{m.file}` | {why} | {result} | `{by}` | {secs:.0f} |" if by else
                     f"| `{m.name}` | `{m.file}` | {why} | {result} | | {secs:.0f} |")
    killed = sum(r == "killed" for _, r, _, _ in rows)
    summary = f"{killed} of {len(rows)} mutations killed"
    print("\n" + "\n".join(table) + "\n\n" + summary)
    if a.markdown:
        pathlib.Path(a.markdown).write_text("\n".join(table) + "\n\n" + summary + "\n")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
