"""The README's tour runs as written: its Python blocks, in order, in one namespace."""
import pathlib

from ._snippets import run_blocks

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run():
    run_blocks(ROOT / "README.md", min_blocks=3)
