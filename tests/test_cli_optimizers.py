"""The main command's --optimizer: every optimizer trains the VAE on digits; bad flags are one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ppl.models import cli

TINY = ["--steps", "3", "--chunk", "3", "--eval-particles", "4", "--latent", "3", "--hidden", "16",
        "--batch-size", "12", "--no-progress"]


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "lbfgs"], "--optimizer 'lbfgs': unknown optimizer; choose one of adam, sgd, diffgrad, mfac, rm3"),
    (["--optimizer", "adam", "--damping", "0.1"], "--damping applies to --optimizer mfac, not adam"),
    (["--optimizer", "rm3", "--momentum", "0.9"], "--momentum applies to --optimizer sgd / mfac, not rm3"),
    (["--optimizer", "mfac", "--mfac-grads", "0"], "--optimizer mfac: scale_by_mfac(num_grads=0): must be an integer >= 1"),
    (["--optimizer", "mfac", "--damping", "-1"], "scale_by_mfac(damping=-1.0)"),
    (["--optimizer", "diffgrad", "--b1", "1.0"], "scale_by_diffgrad(b1=1.0)"),
    (["--optimizer", "sgd", "--momentum", "1.5"], "--momentum must lie in [0, 1), got 1.5"),
    (["--optimizer", "adam", "--weight-decay", "-1"], "--weight-decay must be >= 0"),
])
def test_bad_optimizer_flags(argv, message, capsys, tmp_path):
    assert cli.main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppl: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # 10-20 s each on 2 CPU cores (compiling the VAE step, its metrics and plots)
@pytest.mark.parametrize("argv", [["--optimizer", "diffgrad"], ["--optimizer", "mfac", "--mfac-grads", "4"],
                                  ["--optimizer", "rm3", "--lr", "0.01"],
                                  ["--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.01"]])
def test_vae_trains_with_each_optimizer(argv, tmp_path, capsys):
    assert cli.main(argv + TINY + ["--out", str(tmp_path / "run")]) == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["optimizer"]["name"] == argv[1] and np.isfinite(s["final_loss_mean_last_100"])
    assert "optimizer " + argv[1] in capsys.readouterr().out


def test_cli_optimizer_subprocess(tmp_path):
    """The real command line, with the M-FAC hyperparameters recorded in the summary."""
    env = dict(os.environ, MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-m", "ppl", "--optimizer", "mfac", "--mfac-grads", "8", "--damping", "0.01",
                        "--momentum", "0.5", *TINY, "--out", "run"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["optimizer"] == {"name": "mfac", "mfac_grads": 8, "damping": 0.01, "momentum": 0.5, "weight_decay": 0.0}
