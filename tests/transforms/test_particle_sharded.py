"""Particle-parallel objectives: ``particle_axis=`` splits the K particles over a mesh axis.

One worker process (``_particle_sharded_worker.py``, 8 simulated CPU devices) computes every
objective's estimate and gradient with the same key, split and unsplit, a ``fit`` on a data x
particles mesh, and a CBO step with its particles split (``CBO(..., particle_axis=)``); its
docstrings derive the tolerances (float32 epsilon, the number of summands, measured term
magnitudes) and the negative controls.
"""
import os

import pytest

from .._processes import worker_report

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_particle_sharded_worker.py")


@pytest.fixture(scope="module")
def report():
    return worker_report(WORKER)


def test_split_particles_give_the_same_estimate_and_gradient(report):
    assert report["devices"] == 8
    neg = report["negative_control"]  # one device's particles lost must be visible
    assert report["tol_value"] < 0.1 * neg["value"] and report["tol_grad"] < 0.1 * neg["grad"]
    names = {"iwae", "iwae_stl", "iwae_dreg", "vimco", "renyi", "rws_wake_p", "rws_wake_q", "f_divergence"}
    assert set(report["value"]) == set(report["grad"]) == names
    for name in names:
        assert report["value"][name] <= report["tol_value"], (name, report["value"][name])
        assert report["grad"][name] <= report["tol_grad"], (name, report["grad"][name])


def test_log_weights_are_split_over_the_devices(report):
    assert report["specs"]["log_weights_shard_shape"] == [2]  # 16 particles, 8 devices


def test_fit_with_data_and_particle_axes_matches_one_device(report):
    assert report["fit"]["steps"] == 20
    assert report["fit"]["diff"] <= report["fit"]["tol"], report["fit"]


def test_cbo_particles_split_give_the_same_step(report):
    c = report["cbo"]
    assert c["energy_shard_shape"] == [8]  # 64 particles over 8 devices
    assert c["init_energy_diff"] == 0.0  # elementwise: no reduction to reorder
    assert c["tol_consensus"] < 0.1 * c["negative_consensus"]
    assert c["consensus_diff"] <= c["tol_consensus"] and c["x_diff"] <= c["tol_x"], c
    # 30 steps of minimize: both run to max_steps and descend; their best energies agree closely
    # (a sanity check, not a derived bound: differences can grow from step to step)
    assert c["minimize_steps"] == [30, 30] and max(c["minimize_best"]) < 0.5 * c["start_best"]
    assert abs(c["minimize_best"][0] - c["minimize_best"][1]) <= 1e-4 * c["start_best"]


def test_nonfinite_step_is_named_with_split_particles(report):
    one, split = report["nonfinite"]  # the eager re-run that names parameters runs under the mesh
    assert one is not None and one == split and "not finite at step" in one


def test_bad_particle_axis_is_named(report):
    expected = {"no_mesh": ("no mesh is set", "jax.set_mesh"), "no_axis": ("'chains'", "('particles',)"),
                "indivisible": ("12 particles", "(8)"), "explicit": ("Explicit", "AxisType.Auto")}
    for case, parts in expected.items():
        for part in parts:
            assert part in report["errors"][case], (case, part)
