"""Loading leakdbt's optional C extensions (the block counter, the trace recorder) with
ctypes: each is built by setup.py when a compiler is present, and leakdbt falls back to
Python hooks when it is not there or does not match the Python mirror of its state."""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Callable


def load_extension(module: str, size_symbol: str, struct_size: int,
                   declare: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """The shared object of ``module``, or None: not built, built for another layout (its
    ``size_symbol()`` differs from ``struct_size``, the ctypes mirror's size), or missing a
    function ``declare`` (which sets argument and result types) touches."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
        size = getattr(lib, size_symbol)
        size.restype = ctypes.c_uint64
        if size() != struct_size:
            return None
        declare(lib)
    except (OSError, AttributeError):
        return None
    return lib
