"""XLA:CPU-specific tuning, gathered here so that the core (``fit``, ``cbo``) reads as the algorithm.

Every piece keeps results the same (bit for bit, or up to float rounding where said) and is kept
because it pays on XLA:CPU. Numbers: interleaved A/B in one process on the project's 2-core CPU
machine, JAX 0.10.2; ``.venv/bin/python bench/bench_xla_cpu.py`` switches each piece off and on
(2026-11-30, on / off: 0.31-0.36 for a 4M normal draw, 0.49 / 0.67 for a CBO run at d=2 / 10,
0.92 for AIR's value-and-gradient at batch 64). BENCHMARKS.md, section "XLA:CPU-specific
tuning", has those and the measurements made when each piece was adopted (below).

1. Fused dots, :data:`CPU_FUSED_DOTS` (public as ``fit.CPU_FUSED_DOTS``:
   ``fit(..., compiler_options=CPU_FUSED_DOTS)``, or ``jax.jit``'s ``compiler_options``). YNNPACK takes each matrix product together with the elementwise operations
   around it, so a step runs fewer, larger kernels; same values up to float rounding. AIR's
   value-and-gradient (dozens of small products): 358 instead of 431 fusions, 0.72-0.92x the
   time at batch 64-128 (``bench/bench_air_pyro.py``, ``--no-fused-dots`` for the A/B). The
   VAE's 784x200 products run 0-5% slower with it, so it is opt-in per compile
   (``models.air.compiler_options()`` gives it for AIR on CPU, ``None`` elsewhere). Backend: XLA:CPU only (an XLA:CPU
   option; XLA calls it experimental, and a jaxlib without it fails at compile time with "No
   such compile option").
2. Unrolled Threefry, :func:`split`, :func:`normal`, :func:`bits` (the hash is in
   ``_threefry.py``). JAX lowers Threefry-2x32 on CPU as a rolled loop that materializes the
   whole array per iteration; unrolled it is one elementwise fusion and draws the same numbers
   as ``jax.random`` bit for bit (``tests/transforms/test_cbo.py``). ``jax.random.normal`` of
   4M numbers 143 -> 27 ms; CBO at d=2 5.2 -> 2.1 ms per run (``bench/bench_cbo.py``). For
   AIR's step it changes nothing measurable, so only CBO uses it. Backend: XLA:CPU; on other
   backends these functions are ``jax.random``'s own (the same numbers either way).
3. Coordinate-major particles, :func:`to_coordinate_major` / :func:`from_coordinate_major`
   (CBO). XLA:CPU emits elementwise fusions over the minor axis of their output, slow when that
   axis is a particle's d = 2..30 coordinates; CBO's ``minimize`` carries the particles flat as
   ``x.T.reshape(-1)`` so that the particle move runs over one long axis and the vmapped
   objective over the N particles. 0.87x the time at d=10 and d=30, 0.90x at d=2, after an
   earlier flat (N, d) carry had given 3x at d=10 (``bench/bench_cbo.py``). Backend: CBO's
   step is written for this layout on every backend; it was measured on XLA:CPU only.
"""
from __future__ import annotations

import jax

from . import _threefry

__all__ = ["CPU_FUSED_DOTS", "split", "normal", "bits",
           "to_coordinate_major", "from_coordinate_major"]

CPU_FUSED_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def split(key, num: int = 2):
    """``jax.random.split(key, num)``: the same keys, with the hash unrolled on CPU."""
    return _threefry.split(key, num) if _on_cpu() else jax.random.split(key, num)


def normal(key, shape, dtype=jax.numpy.float32):
    """``jax.random.normal(key, shape, dtype)``: the same numbers, with the hash unrolled on CPU.
    Drawn flat and reshaped (the same numbers: the counters are the flat element indices),
    because XLA:CPU compiles the hash for 2-D shapes very slowly."""
    shape = tuple(shape)
    if not _on_cpu():
        return jax.random.normal(key, shape, dtype)
    size = 1
    for s in shape:
        size *= s
    return _threefry.normal(key, (size,), dtype).reshape(shape)


def bits(key, shape):
    """``jax.random.bits(key, shape, uint32)``: the same bits, with the hash unrolled on CPU."""
    return _threefry.bits(key, shape) if _on_cpu() else jax.random.bits(key, tuple(shape), jax.numpy.uint32)


def to_coordinate_major(x):
    """Particles ``x`` of shape ``(N, d)`` as the flat ``(d * N,)`` array ``x.T.reshape(-1)``."""
    return x.T.reshape(-1)


def from_coordinate_major(flat, num_particles: int, dim: int):
    """The inverse of :func:`to_coordinate_major`: back to shape ``(N, d)``."""
    return flat.reshape(dim, num_particles).T
