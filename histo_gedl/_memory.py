"""Returning freed heap memory to the operating system.

glibc's allocator keeps memory that Python, NumPy, PyTorch and zarr's
threads have freed, in several arenas, for reuse. Fragmented heaps keep
such memory resident even when little is live, which raises the resident
memory of later stages of a run.
:func:`release_free_memory` calls glibc's ``malloc_trim`` to return that
memory. With another C library it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        # Not glibc (musl, macOS, Windows): nothing to trim.
        return None


def release_free_memory() -> bool:
    """Return freed heap memory to the system where the C library is glibc, and report whether it did."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
