"""``make bench``'s runner finds every benchmark script and refuses unknown names."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_run_all_lists_every_benchmark():
    out = subprocess.run([sys.executable, "bench/run_all.py", "--list"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert listed == {p.stem[len("bench_"):] for p in (ROOT / "bench").glob("bench_*.py")}


def test_run_all_refuses_an_unknown_name():
    r = subprocess.run([sys.executable, "bench/run_all.py", "--only", "nope"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown benchmark(s) nope" in r.stderr
