"""Process-wide configuration that several entry points share.

:func:`use_compilation_cache` points JAX's persistent compilation cache at one folder; the main
command (``python -m ppl``), the test suite and its worker processes, and the examples call it
before anything compiles, so that a second run of the same program skips XLA's compile.
"""
from __future__ import annotations

import os

__all__ = ["use_compilation_cache"]


def use_compilation_cache(path=None) -> str:
    """Point JAX's persistent compilation cache at ``path`` (default ``$PPL_JAX_CACHE`` or
    ``~/.cache/ppl/jax``); call before anything compiles. Returns the absolute path.
    The main command, the test suite and its worker processes share it."""
    import jax

    path = os.path.abspath(path or os.environ.get("PPL_JAX_CACHE")
                           or os.path.join(os.path.expanduser("~"), ".cache", "ppl", "jax"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
