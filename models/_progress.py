"""A progress bar for long evaluations (tqdm when installed and asked for; otherwise nothing)."""
from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def bar(total: int, desc: str, enabled=None):
    """Yield ``advance(n)``; with ``enabled`` None the bar shows only on a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    tqdm = None
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # the bar is optional
            tqdm = None
    if tqdm is None:
        yield lambda n=1: None
        return
    b = tqdm(total=total, desc=desc, unit="img", unit_scale=True, dynamic_ncols=True, file=sys.stderr)
    try:
        yield b.update
    finally:
        b.close()


def describe(what: str, num_particles: int, num_examples: int) -> str:
    """``"log-likelihood, K = 1,000, 10,000 images"``."""
    return f"{what}, K = {num_particles:,}, {num_examples:,} images"
