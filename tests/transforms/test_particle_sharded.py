"""Particle-parallel objectives: ``particle_axis=`` splits the K particles over a mesh axis.

One worker process (``_particle_sharded_worker.py``, 8 simulated CPU devices) computes every
objective's estimate and gradient with the same key, split and unsplit, and a ``fit`` on a
data x particles mesh; its docstring derives the tolerance (float32 epsilon, the number of
summands, term magnitudes measured on independent draws) and the negative control.
"""
import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_particle_sharded_worker.py")


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    res = subprocess.run([sys.executable, WORKER], env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_split_particles_give_the_same_estimate_and_gradient(report):
    assert report["devices"] == 8
    neg = report["negative_control"]  # one device's particles lost must be visible
    assert report["tol_value"] < 0.1 * neg["value"] and report["tol_grad"] < 0.1 * neg["grad"]
    names = {"iwae", "iwae_dreg", "vimco", "renyi", "rws_wake_q", "f_divergence"}
    assert set(report["value"]) == set(report["grad"]) == names
    for name in names:
        assert report["value"][name] <= report["tol_value"], (name, report["value"][name])
        assert report["grad"][name] <= report["tol_grad"], (name, report["grad"][name])


def test_log_weights_are_split_over_the_devices(report):
    assert report["specs"]["log_weights_shard_shape"] == [2]  # 16 particles, 8 devices


def test_fit_with_data_and_particle_axes_matches_one_device(report):
    assert report["fit"]["steps"] == 20
    assert report["fit"]["diff"] <= report["fit"]["tol"], report["fit"]


def test_bad_particle_axis_is_named(report):
    e = report["errors"]
    assert "no mesh is set" in e["no_mesh"] and "jax.set_mesh" in e["no_mesh"]
    assert "'chains'" in e["no_axis"] and "('particles',)" in e["no_axis"]
    assert "12 particles" in e["indivisible"] and "(8)" in e["indivisible"]
    assert "Explicit" in e["explicit"] and "AxisType.Auto" in e["explicit"]
