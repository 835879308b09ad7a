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

from .._processes import free_port, run_together

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


TWO_PROCESS_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_two_process_ef21_worker.py")


def test_ef21_across_two_processes_matches_one_process(tmp_path):
    """``jax.distributed`` with the gloo CPU collectives, 2 processes x 4 simulated devices on
    127.0.0.1, one mesh of 8 (one client per device): EF21-W with minibatches and partial
    participation gives the one-process, one-device result (computed here)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out, port = tmp_path / "out.json", free_port()
    run_together([[sys.executable, TWO_PROCESS_WORKER, str(port), str(i), str(out)] for i in range(2)], env)
    runs = [json.loads((tmp_path / f"out.json.{i}").read_text()) for i in range(2)]
    with jax.enable_x64(True):
        from ppl.backends.distributed import ef21_stepsize, ef21_w, top_k
        from ppl.models.federated import heterogeneous_logistic, logistic_loss

        data, Li, L, x0 = heterogeneous_logistic(n=8, m=12, d=10)
        m = ef21_w(logistic_loss(0.1), top_k(3), ef21_stepsize(Li, 3 / 10, L=L), smoothness=Li, batch_size=5,
                   participation=0.5)
        st, info = m.run(jax.random.key(1), m.init(jax.random.key(0), jnp.asarray(x0), data), data, 40)
        ref, ref_bytes = np.asarray(st.params), np.asarray(info.bytes_sent).tolist()
    for i, r in enumerate(runs):
        assert (r["process"], r["processes"], r["devices"], r["local_devices"]) == (i, 2, 8, 4)
        assert np.max(np.abs(np.asarray(r["params"]) - ref)) < 1e-10
        assert r["bytes"] == ref_bytes and r["g_clients_sharding"] == "P('clients',)"
