"""Shared test configuration: float64 where asked, a fixed key, the compilation cache."""
import jax
import pytest

from ppl.config import use_compilation_cache

# JAX's persistent compilation cache keeps the suite fast on 2 CPU cores.
use_compilation_cache()


@pytest.fixture
def key():
    """A fixed PRNG key: tests never take seeds from the clock."""
    return jax.random.key(0)
