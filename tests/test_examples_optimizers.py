"""Smoke-run the optimizer examples (diffGrad 1-D, M-FAC digits, robust aggregation, VAE
optimizers) in a subprocess with tiny flags."""

import pytest

from ._examples import assert_example_runs

CASES = {
    "diffgrad_1d.py": (["--iters", "300"], ["F1", "0.200", "-0.300", "-0.812"], "diffgrad_1d.png"),
    "mfac_digits.py": (["--steps", "20", "--hidden", "8", "--grid", "sgd:0.1;adam:0.01;mfac:0.01"],
                       ["mfac", "best per optimizer"], "mfac_digits.png"),
    "robust_aggregation_digits.py": (["--steps", "4", "--log-every", "2", "--width", "8", "--batch-size", "12",
                                      "--coherence-sample", "6", "--noise", "0,1"],
                                     ["winsorized SGD", "100%"], "robust_aggregation_digits.png"),
    "vae_optimizers.py": (["--steps", "4", "--chunk", "2", "--tiny", "--runs", "adam;mfac:mfac-grads=4"],
                          ["adam", "mfac:mfac-grads=4"], "vae_optimizers.png"),
}


@pytest.mark.slow  # 15-40 s each on 2 CPU cores, dominated by XLA compilation
@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script, tmp_path):
    flags, expected, png = CASES[script]
    assert_example_runs(script, flags, expected, out=tmp_path, png=png, env={"MPLBACKEND": "Agg"})
