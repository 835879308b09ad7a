"""Helpers for tests that start several JAX processes on localhost (``jax.distributed``)."""
import socket
import subprocess


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
