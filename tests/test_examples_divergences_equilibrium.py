"""The f-divergence mode-coverage example, run in-process with tiny flags: its ``main``
returns the modes covered per seed for each divergence it was asked for."""
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
