"""The README's tour runs as written: its Python blocks, in order, in one namespace."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 3
    ns: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md block {i}", "exec"), ns)
        except Exception as e:  # say which block
            raise AssertionError(f"README.md python block {i} fails: {type(e).__name__}: {e}") from e
