"""Helpers for tests that start JAX in other processes: one worker on simulated devices, or
several processes on localhost (``jax.distributed``)."""
import json
import os
import socket
import subprocess
import sys


def free_port():
    """A free TCP port on 127.0.0.1 for the coordinator."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_together(commands, env, timeout=300):
    """Start every command at once, wait for all (killing any left after ``timeout`` seconds),
    and assert that each exited with 0 (the message shows their stderr tails)."""
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    try:
        errs = [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * len(procs), [e[-3000:] for e in errs]


def worker_report(worker, *args, devices=8, timeout=400):
    """Run ``python worker *args`` on ``devices`` simulated CPU devices (the count is fixed when
    JAX starts, hence the process) and return the JSON object it prints last."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    res = subprocess.run([sys.executable, worker, *map(str, args)], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
