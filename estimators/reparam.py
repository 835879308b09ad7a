"""Reparameterization (pathwise) gradients: :class:`ppl.transforms.Reparam`, re-exported.

The rule lives in ``ppl.transforms`` because ADEV uses it as the default for
distributions with a reparameterized sampler.
"""
from ppl.transforms import Reparam

__all__ = ["Reparam"]
