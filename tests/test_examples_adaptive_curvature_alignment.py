"""Smoke-run the adaptive-batch, curvature-diagnostics and Hessian-alignment examples in a
subprocess with tiny flags."""

import pytest

from ._examples import assert_example_runs

CASES = {
    "adaptive_batch_digits.py": (["--steps", "12", "--seeds", "1", "--initial", "4", "--maximum", "32",
                                  "--constant", "4", "32"],
                                 ["adaptive norm", "adaptive augmented", "constant 32", "test acc"],
                                 "adaptive_batch_digits.png"),
    "hessian_batch_size.py": (["--steps", "20", "--chunk", "10", "--sizes", "8", "32", "--repeats", "2",
                               "--iters", "10", "--lanczos", "6", "--probes", "2", "--hidden", "8"],
                              ["lambda_max", "full batch", "NC1", "GD stable", "SLQ"], "hessian_batch_size.png"),
    "hgp_colored_digits.py": (["--steps", "6", "--anneal", "3", "--restarts", "1", "--probes", "2", "--hidden", "8"],
                              ["erm", "hgp", "hutchinson", "test acc"], None),
}


@pytest.mark.slow  # 20-60 s each on 2 CPU cores, dominated by XLA compilation
@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script, tmp_path):
    flags, expected, png = CASES[script]
    assert_example_runs(script, flags, expected, out=tmp_path, png=png)
