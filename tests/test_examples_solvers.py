"""Smoke-run the BO-REP hyper-cleaning and convex-ReLU examples in a subprocess with tiny flags."""
import pytest

from ._examples import assert_example_runs


@pytest.mark.slow  # ~40 s on 2 busy cores: five kernels compiled
def test_bo_rep_hypercleaning_example():
    """At small size BO-REP still gives the flipped examples less weight than the clean ones."""
    out = assert_example_runs(
        "bo_rep_hypercleaning.py",
        ["--n-train", "200", "--n-test", "200", "--n-valid", "100", "--steps", "60", "--refine", "60",
         "--lower-steps", "5", "--period", "5", "--plain-lrs", "1000", "--upper-lrs", "0.5",
         "--noisy-steps", "200", "--batch", "100"],
        ["noisy (lam = 0)", "plain-gradient baseline", "summary: test acc noisy"])
    line = next(s for s in out.splitlines() if s.startswith("BO-REP weights"))
    w_flipped, w_clean = float(line.split()[3]), float(line.split()[6])
    assert w_flipped < 0.5 < w_clean, out


@pytest.mark.slow  # ~1-2 min on 2 busy cores: ADMM on 400 examples and the non-convex runs
def test_convex_relu_breast_cancer_example():
    assert_example_runs(
        "convex_relu_breast_cancer.py",
        ["--gates", "10", "--iters", "200", "--steps", "200", "--restarts", "1", "--sgd-lrs", "1e-4"],
        ["ADMM", "recovered network", "GD+momentum", "SGD (batch 32)", "test acc"], timeout=900)
