"""Smoke-run the implicit-differentiation, CBO and ODICE examples in a subprocess with tiny flags."""

import pytest

from ._examples import assert_example_runs

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
    assert_example_runs(script, flags, expected, out=tmp_path, png=png, timeout=300)
