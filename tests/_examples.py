"""Running an example as a user would: ``python -W error examples/SCRIPT FLAGS`` in a subprocess."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_example_runs(script, flags, expected, out=None, png=None, timeout=600, env=None):
    """Run ``examples/script`` with ``flags`` (and ``--out out`` when given): it must exit 0, print
    every string of ``expected`` and, when ``png`` is named, write ``out/png``. Returns stdout."""
    cmd = [sys.executable, "-W", "error", os.path.join(ROOT, "examples", script), *flags]
    if out is not None:
        cmd += ["--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env=None if env is None else dict(os.environ, **env))
    assert r.returncode == 0, r.stderr[-3000:]
    for word in expected:
        assert word in r.stdout, r.stdout
    if png is not None:
        assert os.path.exists(os.path.join(str(out), png)), f"{script} wrote no {png}"
    return r.stdout
