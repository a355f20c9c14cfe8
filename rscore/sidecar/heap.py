"""Handing the memory of large request bodies back to the system once a burst of them is
over, and not before.

CPython frees a large body's objects when its request is done, but glibc's malloc keeps
the freed pages in its arena, so without help the sidecar's resident memory stays near
its peak after a burst of large bodies. `malloc_trim(0)` returns those pages.
`HeapTrimmer` runs it on the given executor (the parse thread) once bodies too large to
be parsed on the event loop, adding up to TRIM_AFTER_BYTES, have been answered since
the last trim and none has been for QUIET_S, or LONGEST_DEFERRAL_S after the first of them
while they keep coming.

Why not sooner: a page handed back costs a page fault when it is used again (~3 us per
4 KiB page on this machine's VM), and a 100,000-row request allocates ~16 MB on its
way through the sidecar: returned after each request (a trim per request, or glibc's
own mmap and trim thresholds left low), back-to-back 2 MB requests took 46 ms each
instead of 22 (docs/benchmarks.md, bench-big). `keep_freed_memory_for_trim()`, called
once at start, fixes glibc's thresholds so blocks up to MMAP_THRESHOLD_BYTES come from
the arena and freed memory stays there for the next request until the trim (only
larger blocks are mappings of their own, returned at free), and keeps one arena: the
parse thread's own would keep its top after a trim. The price of the one arena: a trim
holds its lock while it walks the free memory (~6 ms per 100 MB freed, measured), and
any thread that allocates meanwhile, the event loop's too, waits; it runs once a burst
is over, not per request.

Where the C library has neither call (musl, macOS) both do nothing. Never frees or
touches memory itself.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol

from rscore.r_scorer.heap_trim import malloc_trim

__all__ = ["HeapTrimmer", "keep_freed_memory_for_trim", "malloc_trim"]

log = logging.getLogger("rscore.heap")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # mallopt's, from malloc.h
# Blocks this large or larger are mappings of their own, returned as soon as freed: a
# body of tens of MB is rare enough that faulting its pages in again costs little.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's own ceiling for its moving threshold
# Freed memory at the top of an arena is returned only past this (glibc's default is
# 128 KiB, which hands a large request's memory back at every free): the trim does it.
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

# A body of 1 MiB leaves ~10 MiB of freed objects behind (see rscore.sidecar.body_budget):
# bodies adding up to this since the last trim are worth one.
TRIM_AFTER_BYTES = 1024 * 1024
# No large body answered for this long: the burst is over, trim.
QUIET_S = 0.5
# Large bodies answered without a pause this long: trim anyway (what a steady stream
# holds is its working set, but a stream that shrinks should not keep its peak).
LONGEST_DEFERRAL_S = 10.0


class Timer(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], Timer]  # asyncio's loop.call_later


def keep_freed_memory_for_trim() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES and its trim threshold at
    TRIM_THRESHOLD_BYTES, with one arena; False where there is no mallopt.

    Left to itself glibc starts both low (128 KiB: every large block a mapping,
    returned at free, faulted in again by the next request) and raises them as large
    blocks are freed, so memory is kept or not depending on the history. Fixed, what a
    request frees stays for the next one, and `HeapTrimmer` decides when it goes back.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mapped = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    one_arena = mallopt(M_ARENA_MAX, 1)
    return bool(mapped and one_arena and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


class HeapTrimmer:
    """Trims the heap on `executor` once large bodies adding up to TRIM_AFTER_BYTES stop
    (QUIET_S without one) or have gone LONGEST_DEFERRAL_S untrimmed; at most one trim
    waits. Bodies of at most `parsed_inline_up_to` bytes (parsed on the event loop; they
    leave a few KB each, which the next requests reuse) are not counted. With `trim`
    None (no malloc_trim here) it does nothing. `call_later` arms the timer (the running
    event loop's by default); `clock` is the one it counts in."""

    def __init__(
        self,
        executor: Executor,
        trim: Callable[[], None] | None,
        *,
        parsed_inline_up_to: int,
        call_later: CallLater | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._executor = executor
        self._trim = trim
        self._parsed_inline_up_to = parsed_inline_up_to
        self._call_later = call_later
        self._clock = clock
        self._timer: Timer | None = None
        self._untrimmed_since: float | None = None  # the first large body since a trim
        self._untrimmed_bytes = 0  # and the bytes of all of them
        self._waiting = False
        self.trims = 0  # how many ran: for tests and curiosity

    def answered(self, body_bytes: int) -> None:
        """A request whose body held `body_bytes` was answered: count it if it was large,
        and (re)arm the trim once the large bodies since the last add up."""
        if self._trim is None or body_bytes <= self._parsed_inline_up_to:
            return
        now = self._clock()
        if self._untrimmed_since is None:
            self._untrimmed_since = now
        self._untrimmed_bytes += body_bytes
        if self._untrimmed_bytes < TRIM_AFTER_BYTES:
            return
        due = min(now + QUIET_S, self._untrimmed_since + LONGEST_DEFERRAL_S)
        if self._timer is not None:
            self._timer.cancel()
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._timer = call_later(max(0.0, due - now), self._due)

    def _due(self) -> None:
        self._timer = None
        self._untrimmed_since, self._untrimmed_bytes = None, 0
        if self._waiting:
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
