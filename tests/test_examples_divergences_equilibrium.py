"""Smoke-run the f-divergence mode-coverage example in a subprocess with tiny flags."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "fdiv_gmm.py": (["--steps", "5", "--seeds", "1", "--particles", "4", "--components", "3",
                     "--divergences", "reverse_kl", "jensen_shannon", "--normalize"],
                    ["reverse_kl", "jensen_shannon", "modes covered"], "fdiv_gmm.png"),
}


@pytest.mark.slow  # 15-40 s each on 2 CPU cores, dominated by XLA compilation
@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script, tmp_path):
    flags, expected, png = CASES[script]
    out = subprocess.run(
        [sys.executable, "-W", "error", os.path.join(ROOT, "examples", script), *flags, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    for word in expected:
        assert word in out.stdout, out.stdout
    if png is not None:
        assert (tmp_path / png).exists()
