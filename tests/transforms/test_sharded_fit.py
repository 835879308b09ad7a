"""``fit(..., mesh=...)``: data-parallel training on 8 simulated CPU devices.

One worker process (``_sharded_fit_worker.py``, started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``) runs every fit and prints JSON; the
tests below check it. The tolerance for "same as one device up to float reduction order" is
derived in the worker's docstring from float32's epsilon, the number of summands per
minibatch gradient (16), the learning rate, the number of steps and the measured gradient
sums and curvature; a negative control (one device's share of each minibatch dropped) must
exceed it. The same holds for ``fit(param_sharding=...)``, checked on a second problem whose
parameters are matrices (its own measured tolerance and negative control).
"""
import json
import os
import sys

import numpy as np
import pytest

from .._processes import free_port, run_together, worker_report

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sharded_fit_worker.py")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return worker_report(WORKER, tmp_path_factory.mktemp("sharded_fit"))


def test_sharded_fit_matches_one_device_up_to_reduction_order(report):
    assert report["devices"] == 8
    assert report["lr_times_max_curvature"] <= 2  # the tolerance's derivation assumes it
    tol = report["tol"]
    assert tol < 0.1 * report["negative_control"]  # the tolerance can tell a lost shard apart
    for mesh, diff in report["diff"].items():  # 8 devices, 2 devices, 4x2 with data_axis="data"
        assert diff <= tol, (mesh, diff, tol)


def test_minibatch_split_parameters_replicated_compiled_once(report):
    assert report["batch_specs_mesh8"] == ["P('data',)"]  # what the partitioner gave the loss's batch
    assert report["param_sharding_mesh8"] == "P()" and report["param_devices_mesh8"] == 8
    # one trace of the loss for one chunk and for three: the later chunks reuse the compile
    assert report["traces_mesh8_one_chunk"] == report["traces_mesh8_three_chunks"] == 1


def test_checkpoint_resumes_across_device_counts(report):
    assert report["restored_exact"] == {"8to1": True, "1to8": True}  # the state read equals the state written
    assert report["resumed_steps"] == [30, 30, 30, 30]
    for way, diff in report["resumed_diff"].items():
        assert diff <= report["tol"], (way, diff)
    assert report["process1_wrote"] is False  # only process 0 writes


def test_nonfinite_step_is_the_same_with_the_mesh(report):
    nf = report["nonfinite"]
    assert len(nf["messages"]) == 2 and nf["messages"][0] == nf["messages"][1], nf  # same step named
    assert nf["steps"][0] == nf["steps"][1] < 30
    assert nf["state_diff"] <= report["tol"]


def test_bad_mesh_input_is_named(report):
    e = report["errors"]
    assert "'batch'" in e["axis"] and "('data',)" in e["axis"]
    assert "(60)" in e["examples"] and "(8)" in e["examples"]
    assert "batch_size=12" in e["batch"] and "(8)" in e["batch"]
    assert "data_axis=" in e["two_axes"] and "'model'" in e["two_axes"]
    assert "mesh=" in e["axis_without_mesh"]
    assert "data=" in e["no_data"]
    assert e["not_a_mesh"].startswith("TypeError") and "Mesh" in e["not_a_mesh"]
    assert "adaptive" in e["adaptive"]


def test_param_sharded_fit_matches_one_device_up_to_reduction_order(report):
    ps = report["param_sharded"]
    assert ps["lr_times_max_curvature"] <= 2  # the tolerance's derivation assumes it
    assert ps["tol"] < 0.1 * ps["negative_control"]
    assert set(ps["diff"]) == {"4x2 'model'", "2x4 'model'", "4x2 'data'", "explicit", "function"}
    for how, diff in ps["diff"].items():
        assert diff <= ps["tol"], (how, diff, ps["tol"])


def test_param_sharding_places_params_and_optimizer_state_compiled_once(report):
    ps = report["param_sharded"]
    # parameters of shape (4, 6): the largest dimension divisible by the axis size is split
    assert ps["result_specs"] == {"4x2 'model'": "P(None, 'model')", "2x4 'model'": "P('model',)",
                                  "4x2 'data'": "P('data',)", "explicit": ["P('data', 'model')", "P()"],
                                  "function": "P(None, 'model')"}
    assert ps["specs_in_loss"] == ["P(None, 'model')"]  # the loss sees them split too
    assert ps["traces_three_chunks"] == 1
    assert ps["adam_specs"] == ["P(None, 'model')", "P(None, 'model')", "P()"]  # moments split, count not
    assert ps["no_data"][0] == "P(None, 'model')" and ps["no_data"][1] < 1e-6  # runs without data


def test_param_sharded_checkpoint_resumes_on_other_meshes(report):
    ps = report["param_sharded"]
    assert ps["restored_exact"] is True
    assert ps["resumed_steps"] == [30, 30]
    for way, diff in ps["resumed_diff"].items():
        assert diff <= ps["tol"], (way, diff)


def test_bad_param_sharding_is_named(report):
    e = report["param_sharded"]["errors"]
    assert "'tensor'" in e["no_axis"] and "('data', 'model')" in e["no_axis"]
    assert "['loc']" in e["spec_axis"] and "'tensor'" in e["spec_axis"]
    assert "['loc']" in e["indivisible"] and "(6)" in e["indivisible"] and "(4)" in e["indivisible"]
    assert "['loc']" in e["too_long"] and "3 dimensions" in e["too_long"]
    assert "structure of params" in e["structure"]
    assert e["not_a_spec"].startswith("TypeError") and "PartitionSpec" in e["not_a_spec"]
    assert "mesh=" in e["no_mesh"]


TWO_PROCESS_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_two_process_fit_worker.py")


@pytest.mark.slow
def test_two_processes_on_localhost_match_one_process(report, tmp_path):
    """Slow (two more JAX processes, about 15 s on 2 cores, and a network port): ``jax.distributed``
    with the gloo CPU collectives, 2 processes x 4 simulated devices on 127.0.0.1, one mesh of 8;
    the same fit as the one-process worker, compared with its one-device result."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.path.dirname(TWO_PROCESS_WORKER))
    port, out, ckpt = free_port(), tmp_path / "out.json", tmp_path / "ck.npz"
    run_together([[sys.executable, TWO_PROCESS_WORKER, str(port), str(i), str(out), str(ckpt)] for i in range(2)], env)
    runs = [json.loads((tmp_path / f"out.json.{i}").read_text()) for i in range(2)]
    for i, r in enumerate(runs):
        assert (r["process"], r["processes"], r["devices"], r["local_devices"]) == (i, 2, 8, 4)
        diff = max(abs(a - b) for a, b in zip(r["params"], report["ref_params"]))
        assert diff <= report["tol"], (i, diff, report["tol"])
        assert len(r["history"]) == len(report["ref_history"]) == 30
    assert runs[0]["params"] == runs[1]["params"]  # replicated: both processes hold the same values
    assert ckpt.exists()  # written by process 0
    # parameters split along "model" on a 4x2 mesh over both processes, checkpointed once
    ps = report["param_sharded"]
    for r in runs:
        assert r["param_sharded_spec"] == "P(None, 'model')"
        diff = max(abs(a - b) for a, b in zip(r["param_sharded"], ps["ref_params"]))
        assert diff <= ps["tol"], (diff, ps["tol"])
    saved = np.load(str(ckpt) + ".params.npz")  # whole arrays, gathered from both processes
    assert saved[".params['loc']"].shape == (4, 6) and saved["__history__"].shape == (30,)
