"""Giving freed memory back to the operating system after a large build.

A full load of the admission replica makes and drops large blocks (the
driver's pages, dictionaries resized as they grow). glibc's malloc serves
blocks of that size from its heap once it has freed a few of them (its
mmap threshold adapts upwards), and the heap keeps what is freed in the
middle of it: about 8 MB after 100,000 entries, counted in RSS although
nothing uses it. `malloc_trim` returns those pages; it takes milliseconds,
and a full load is rare (start-up, a reconnect, a TRUNCATE).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("imagelist.memory")


def _find_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _find_trim()


def release_free_memory() -> None:
    """Return the C heap's free pages to the operating system, where the C
    library can (glibc); elsewhere, do nothing."""
    if _TRIM is not None:
        _TRIM(0)
