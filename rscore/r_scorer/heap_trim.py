"""glibc's `malloc_trim(0)`: hand the pages of freed heap memory back to the system.

Shared by the sidecar (after a burst of large bodies, rscore.sidecar.heap) and the R
workers (once idle, rscore.r_scorer.worker). Where the C library has no such call
(musl, macOS) it is None and nothing trims. Never frees memory itself.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def malloc_trim() -> Callable[[], None] | None:
    """glibc's malloc_trim(0) (ctypes releases the GIL around it), or None."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: libc's
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)
