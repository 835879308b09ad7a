"""Smoke-run the implicit-differentiation, CBO and ODICE examples in a subprocess with tiny flags."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "implicit_hyperparams.py": (["--steps", "3", "--inner-iters", "200"],
                                ["val loss", "hypergradient at"], "implicit_hyperparams.png"),
    "cbo_rastrigin.py": (["--steps", "20", "--seeds", "2", "--particles", "10"],
                         ["success"], "cbo_rastrigin.png"),
    "odice_toy.py": (["--steps", "5", "--states", "5", "--hidden", "4"],
                     ["orthogonal", "semi", "true"], "odice_toy.png"),
}


@pytest.mark.slow  # 20-30 s each on 2 CPU cores, dominated by XLA compilation
@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script, tmp_path):
    flags, expected, png = CASES[script]
    out = subprocess.run(
        [sys.executable, "-W", "error", os.path.join(ROOT, "examples", script), *flags,
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    for word in expected:
        assert word in out.stdout, out.stdout
    assert (tmp_path / png).exists()
