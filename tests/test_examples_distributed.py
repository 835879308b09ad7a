"""Smoke-run the distributed methods' examples in a subprocess with tiny flags."""
import pytest

from ._examples import assert_example_runs

CASES = {
    "ef21_heterogeneous.py": (["--rounds", "30", "--dim", "6", "--k", "2", "--tol", "0.5"],
                              ["EF21-W, L_AM stepsize", "L_QM / L_AM = 1.9420", "bytes/round"]),
    "diff2_diabetes.py": (["--tiny", "--rounds", "10", "--tune-seeds", "1", "--eval-seeds", "2", "--epsilons", "3"],
                          ["dp_gd", "diff2", "DIFF2 - DP-GD", "paper"]),
    "fedamd_digits.py": (["--rounds", "4", "--every", "2", "--lrs", "0.05", "--hidden", "8", "--local-steps", "2"],
                         ["fedamd", "fedavg", "best final accuracy", "paper"]),
}


@pytest.mark.slow  # 10-60 s each on 2 busy CPU cores, dominated by XLA compilation
@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script):
    flags, expected = CASES[script]
    assert_example_runs(script, flags, expected)
