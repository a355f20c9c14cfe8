"""Handing the memory of large request bodies back to the system once they are answered.

CPython frees a large body's objects when its request is done, but glibc's malloc keeps
the freed pages in its arenas (the parse thread has an arena of its own), so without
help the sidecar's resident memory stays near its peak after a burst of large bodies.
`malloc_trim(0)` returns those pages. `HeapTrimmer` runs it after a request whose body
was at least TRIM_AFTER_BYTES is answered, on the given executor (the parse thread: it
walks every arena, so never on the event loop), with at most one trim waiting.
`return_large_blocks_at_once()`, called once at start, keeps glibc from moving large
blocks (a body's bytes, the pointer arrays of its columns) into the heap, where freeing
them returns nothing.

Where the C library has neither (musl, macOS) both do nothing. Never frees or touches
memory itself.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Executor

log = logging.getLogger("rscore.heap")

M_MMAP_THRESHOLD = -3  # mallopt's parameter, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept

# A 1-row request is ~100 bytes and is never worth a trim; a body of 1 MiB leaves
# ~10 MiB of freed objects behind (see rscore.sidecar.body_budget).
TRIM_AFTER_BYTES = 1024 * 1024


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


def return_large_blocks_at_once() -> bool:
    """Fix glibc's mmap threshold at 128 KiB; False where there is no mallopt.

    glibc raises the threshold (up to 32 MiB) each time it frees a mapped block, so
    after the first large body every later one's big blocks come from the heap and
    stay there when freed; fixed, each block of 128 KiB or more is a mapping of its
    own, returned at free. Measured (ten 9 MB bodies at once, no byte budget, answered
    and then trimmed): 87-111 MiB resident afterwards instead of 115-164 MiB.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


class HeapTrimmer:
    """Trims the heap on `executor` after large bodies; at most one trim waits. With
    `trim` None (no malloc_trim here) it does nothing."""

    def __init__(self, executor: Executor, trim: Callable[[], None] | None) -> None:
        self._executor = executor
        self._trim = trim
        self._waiting = False
        self.trims = 0  # how many ran: for tests and curiosity

    def answered(self, body_bytes: int) -> None:
        """A request whose body held `body_bytes` was answered: trim if it was large."""
        if self._trim is None or body_bytes < TRIM_AFTER_BYTES or self._waiting:
            return
        self._waiting = True
        try:
            self._executor.submit(self._run)
        except RuntimeError:  # the executor is shut down: the process is ending
            self._waiting = False

    def _run(self) -> None:
        self._waiting = False  # a body answered from here on asks for a trim of its own
        assert self._trim is not None
        try:
            self._trim()
        except Exception:  # trimming is a courtesy: never let it cost a request
            log.exception("malloc_trim failed")
        self.trims += 1
