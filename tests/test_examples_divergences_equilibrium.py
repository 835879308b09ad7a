"""The f-divergence mode-coverage and equilibrium-propagation examples, run in-process with tiny
flags: their ``main`` returns the numbers they print (modes covered per seed; the cosines,
asymmetry and accuracy per network)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(script):
    spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(ROOT, "examples", script))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # about 20 s on 2 CPU cores, dominated by XLA compilation
def test_fdiv_gmm_runs_and_counts_modes(tmp_path, capsys):
    res = load("fdiv_gmm.py").main(["--steps", "5", "--seeds", "1", "--particles", "4", "--components", "3",
                                    "--divergences", "reverse_kl", "jensen_shannon", "--normalize",
                                    "--out", str(tmp_path)])
    assert sorted(res) == ["jensen_shannon", "reverse_kl"]
    assert all(len(v) == 1 and 0 <= v[0] <= 8 for v in res.values())
    assert "modes covered" in capsys.readouterr().out
    assert (tmp_path / "fdiv_gmm.png").exists()


@pytest.mark.slow  # about 30 s on 2 CPU cores, dominated by XLA compilation
def test_eqprop_digits_runs_and_reports_every_network(tmp_path, capsys):
    res = load("eqprop_digits.py").main(["--steps", "3", "--hidden", "8", "--iters", "10", "--batch", "16",
                                         "--ns", "1", "2", "--betas", "0.05", "--out", str(tmp_path)])
    assert sorted(res) == sorted(f"{n} {w}" for n in ("symmetric", "asymmetric", "asymmetric+homeostasis")
                                 for w in ("start", "end"))
    assert all(-1.0 <= r["beta=0.05 N=2"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0 for r in res.values())
    assert res["symmetric start"]["asymmetry"] < 1e-10 < res["asymmetric start"]["asymmetry"]
    assert "cosine(EP, implicit gradient)" in capsys.readouterr().out
    assert (tmp_path / "eqprop_digits.json").exists()
