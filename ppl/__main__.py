"""``python -m ppl``: launches the main command, :mod:`ppl.models.cli` (``python -m ppl --help``).

The command sits in the top layer: it chooses among models, estimators and optimizers. This
file is a launcher, not library code: ``import ppl`` never runs it, and it names the command
only by module name, looked up when ``python -m ppl`` runs, so the language layer imports
nothing above it (tests/test_layering.py checks both).
"""
import importlib
import sys

if __name__ == "__main__":
    sys.exit(importlib.import_module("ppl.models.cli").main())
