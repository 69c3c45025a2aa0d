"""Returning freed heap memory to the operating system.

glibc's allocator keeps memory that Python, NumPy, PyTorch and zarr's
threads have freed, in several arenas, for reuse. Fragmented heaps keep
such memory resident even when little is live, which raises the resident
memory of later stages of a run.
:func:`release_free_memory` calls glibc's ``malloc_trim`` to return that
memory. :func:`limit_retained_memory` changes allocator settings so that
less such memory builds up in the first place. With another C library both
do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


# mallopt parameters, from glibc's malloc.h.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@functools.cache
def _glibc_function(name: str):
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        # Not glibc (musl, macOS, Windows).
        return None


def _malloc_trim():
    return _glibc_function("malloc_trim")


def release_free_memory() -> bool:
    """Return freed heap memory to the system where the C library is glibc; return whether malloc_trim was called."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def limit_retained_memory(mmap_threshold: int | None = None, max_arenas: int | None = 2) -> bool:
    """Make glibc keep fewer per-thread heaps and, optionally, map large blocks on their own.

    ``max_arenas`` caps the number of heaps that threads (zarr's codec
    threads, PyTorch's workers) create, each of which keeps its own free
    memory. The ``infer`` command calls this at its start with the defaults;
    the settings hold for the whole process.

    By default glibc starts with an mmap threshold of 128 KiB and raises it
    as large mapped blocks are freed (glibc manual, "Malloc Tunable
    Parameters"). Later arrays of that size then come from the heap and can
    stay resident after they are freed. A fixed ``mmap_threshold``
    serves every allocation of at least that many bytes with its own mapping,
    which is returned to the system when freed. That lowered the peak of
    ``infer`` on large slides, but every large array then starts as fresh
    pages: with 1 MiB, prediction took 1.3 to 1.5 times as long
    (docs/benchmarks.md), so ``infer`` leaves it unset.

    Args:
        mmap_threshold: Smallest allocation, in bytes, served by its own
            mapping; None keeps glibc's adaptive threshold.
        max_arenas: Largest number of malloc arenas; None keeps glibc's default.

    Returns:
        Whether the settings were applied (False where the C library is not glibc).
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    applied = True
    if mmap_threshold is not None:
        applied &= bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
    if max_arenas is not None:
        applied &= bool(mallopt(_M_ARENA_MAX, int(max_arenas)))
    return applied
