"""Smoke-run the hard-constraint diffusion-reaction example in a subprocess with --quick."""
import pytest

from ._examples import assert_example_runs


@pytest.mark.slow  # ~35 s on 2 busy cores: three training steps and two LM solves compiled
def test_hard_constraints_diffusion_reaction_example():
    """Every method trains and reports a finite relative error against the finite-difference truth."""
    out = assert_example_runs("hard_constraints_diffusion_reaction.py", ["--quick"],
                              ["soft (PINN loss)", "hard, 1 expert", "hard, MoE 4 experts", "paper:"])
    rows = [s for s in out.splitlines() if s.startswith(("soft", "hard"))]
    assert len(rows) == 3, out
    for row in rows:
        err = float(row.split()[-7])
        assert 0.0 < err < 10.0, row
