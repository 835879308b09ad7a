"""Shared test configuration: float64 where asked, a fixed key, the compilation cache."""
import os

import jax
import pytest

# JAX's persistent compilation cache keeps the suite fast on 2 CPU cores.
_CACHE = os.environ.get("PPL_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ppl", "jax"))
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def key():
    """A fixed PRNG key: tests never take seeds from the clock."""
    return jax.random.key(0)
