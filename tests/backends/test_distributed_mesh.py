"""The distributed methods on a mesh of 8 simulated CPU devices: one worker process
(``_distributed_mesh_worker.py``) runs them and prints JSON; these tests check it. Same results
as one device up to the order of float additions (float64, tolerance 1e-10 against
differences of order 1e-15), clients stacked when there are more of them than devices.

Slow: the worker compiles about 16 programs in a fresh JAX process (about 25 s of CPU on 2
cores, 1-2 minutes of wall time under load), beyond the default suite's budget; run with
``-m slow``."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_distributed_mesh_worker.py")


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    res = subprocess.run([sys.executable, WORKER], env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_ef21_on_a_mesh_matches_one_device(report):
    assert report["devices"] == 8
    r = report["ef21"]
    assert set(r["gd_n8"]["diff"]) == {"mesh8", "mesh2x4"} and set(r["sgd_pp_n16"]["diff"]) == {"mesh8"}
    for case in ("gd_n8", "sgd_pp_n16"):  # one client per device; two stacked per device
        c = r[case]
        assert max(c["diff"].values()) < 1e-10, (case, c)
        assert c["bytes_equal"] and c["g_clients_sharding"] == "P('clients',)", (case, c)
        assert c["loss_drop"] < 0, (case, c)
    assert r["gd_n8"]["bytes_first"] == 8 * 3 * (8 + 4)  # Top-3 of float64: 3 values + 3 int32 indices
    assert set(r["gd_n8"]["participants"]) == {8}
    pp = r["sgd_pp_n16"]["participants"]
    assert 0 < min(pp) and max(pp) < 16 and r["sgd_pp_n16"]["bytes_first"] == pp[0] * 3 * 12
    assert r["ef21_vs_w_mesh8"] < 1e-12
    assert "6 clients" in r["error_uneven"] and "divisible by 8" in r["error_uneven"]


def test_diff2_on_a_mesh_matches_one_device(report):
    r = report["diff2"]
    assert r["diff"] < 1e-10, r  # same noise (one key per round), same clipped means up to summation order
    assert r["restarts"] == [i % 4 == 0 for i in range(12)]
    assert r["loss_drop"] < 0


def test_fedamd_and_fedavg_on_a_mesh_match_one_device(report):
    for name in ("fedamd", "fedavg"):  # 20 clients of different sizes, 5 per device on 4 devices
        r = report["fed"][name]
        assert r["diff"] < 1e-10 and r["same_participants"] and r["same_anchors"], (name, r)
