"""Running a Markdown page's Python blocks as a reader would: in order, in one namespace."""
import re


def python_blocks(path):
    """The ```python blocks of the Markdown file ``path``, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def run_blocks(path, min_blocks=1):
    """Execute every Python block of ``path`` in one namespace and return it; a failure says
    which block."""
    blocks = python_blocks(path)
    assert len(blocks) >= min_blocks, f"{path.name}: {len(blocks)} python blocks, expected >= {min_blocks}"
    ns: dict = {"__name__": "__snippets__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{path.name} block {i}", "exec"), ns)
        except Exception as e:  # say which block
            raise AssertionError(f"{path.name} python block {i} fails: {type(e).__name__}: {e}") from e
    return ns
