"""Choice maps: values of random choices by address, as a pytree.

Stored flat, ``{address_tuple: value}``; viewed nested. ``ChoiceMap.from_dict`` takes a
nested dict (``{"enc": {"z": v}}``) or a flat one keyed by tuples or strings;
``to_dict()`` gives the nested form back.
"""
from __future__ import annotations

import jax
import numpy as np

from ._site import fmt_address, normalize_address

__all__ = ["ChoiceMap"]

_SHOWN_ELEMENTS = 8  # arrays up to this many elements print their values, larger ones a summary


def _show(v):
    """A value for ``repr``: its numbers when small and concrete, else dtype and shape."""
    if isinstance(v, jax.core.Tracer) or not hasattr(v, "shape"):
        return repr(v) if not hasattr(v, "shape") else f"{v.dtype}{list(v.shape)} (traced)"
    if v.size <= _SHOWN_ELEMENTS:
        return np.array2string(np.asarray(v), precision=4, separator=", ")
    return f"{v.dtype}{list(v.shape)}"


@jax.tree_util.register_pytree_node_class
class ChoiceMap:
    """An immutable mapping from addresses (tuples) to values; a pytree over its values."""

    __slots__ = ("_flat",)

    def __init__(self, flat=None):
        flat = {} if flat is None else flat
        self._flat = {normalize_address(k): v for k, v in flat.items()}

    # --- construction ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, d) -> "ChoiceMap":
        """From a nested dict of values, or a flat dict keyed by address tuples."""
        if isinstance(d, ChoiceMap):
            return d
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise TypeError(f"a choice map is built from a dict, got {type(d).__name__}")
        flat = {}

        def walk(prefix, node):
            for k, v in node.items():
                addr = prefix + normalize_address(k)
                if isinstance(v, dict):
                    walk(addr, v)
                elif isinstance(v, ChoiceMap):
                    for a, x in v.items():
                        flat[addr + a] = x
                else:
                    flat[addr] = v

        walk((), d)
        return cls(flat)

    def to_dict(self) -> dict:
        """Nested dict form: ``{"enc": {"z": value}}``."""
        out: dict = {}
        for addr, v in self._flat.items():
            node = out
            for a in addr[:-1]:
                node = node.setdefault(a, {})
            node[addr[-1]] = v
        return out

    # --- mapping interface -------------------------------------------------------------
    def __getitem__(self, addr):
        addr = normalize_address(addr)
        if addr in self._flat:
            return self._flat[addr]
        sub = {a[len(addr):]: v for a, v in self._flat.items() if a[:len(addr)] == addr and len(a) > len(addr)}
        if not sub:
            raise KeyError(f"no choice at address {fmt_address(addr)!r}; addresses are "
                           f"{sorted(fmt_address(a) for a in self._flat)}")
        return ChoiceMap(sub)

    def __contains__(self, addr):
        try:
            addr = normalize_address(addr)
        except TypeError:
            return False
        return addr in self._flat or any(a[:len(addr)] == addr for a in self._flat)

    def get(self, addr, default=None):
        addr = normalize_address(addr)
        return self._flat.get(addr, default)

    def items(self):
        return self._flat.items()

    def addresses(self):
        return list(self._flat)

    def __len__(self):
        return len(self._flat)

    def __iter__(self):
        return iter(self._flat)

    def merge(self, other) -> "ChoiceMap":
        other = ChoiceMap.from_dict(other)
        both = set(self._flat) & set(other._flat)
        if both:
            raise ValueError(f"merging choice maps with common addresses "
                             f"{sorted(fmt_address(a) for a in both)}")
        return ChoiceMap({**self._flat, **other._flat})

    def __repr__(self):
        inner = ", ".join(f"{fmt_address(a)!r}: {_show(v)}" for a, v in self._flat.items())
        return f"ChoiceMap({{{inner}}})"

    # --- pytree ----------------------------------------------------------------------------
    def tree_flatten(self):
        keys = sorted(self._flat, key=lambda a: tuple(map(str, a)))
        return [self._flat[k] for k in keys], tuple(keys)

    @classmethod
    def tree_unflatten(cls, keys, values):
        obj = cls.__new__(cls)
        obj._flat = dict(zip(keys, values))
        return obj
