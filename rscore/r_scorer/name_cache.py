"""A cache of R character vectors (column names, factor levels, classes), bounded in bytes.

A pass-through model (no prototype) sees the column names each client sends, so the
distinct name sets a worker meets are the clients' choice. Each cached set holds its
Python key (a tuple of str) and an R character vector; a count bound (the old 1,024 sets)
let a wide set of 10,000+ names cost megabytes each. This bounds the bytes instead, and
evicts the least recently used set past the bound; a set larger than the whole bound is
built for its request and not kept.

`name_set_bytes()` is what one entry holds, measured against RSS with real R: the key's
`sys.getsizeof` (tuple and strings) plus what R's `object.size()` reports for the vector
(R's header, the pointer array, and one CHARSXP per string in R's small-vector size
classes). Names shared with other live objects are counted again: an overestimate, never
an under. The LRU bookkeeping is cachetools'.

Pure: never imports rpy2 (the worker passes the R constructor in).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from typing import Generic, TypeVar

from cachetools import LRUCache

Names = tuple[str, ...]
V = TypeVar("V")

# Legitimate use needs kilobytes (a prototype's names, each factor's levels, the classes);
# the bound is for clients that send ever new names. Measured (800 sets of 2,000 names
# through r_data_frame, RSS growth): 30 MiB with no cache at all (R's garbage between
# collections), 65 MiB with 16 MiB of cache, 148 MiB with 64 MiB (a larger live heap lets
# R's collector wait longer too), 372 MiB with the old 1,024-set cache (docs/security.md).
DEFAULT_NAME_CACHE_BYTES = 16 * 1024 * 1024
_R_HEADER_BYTES = 48  # sizeof(SEXPREC_ALIGN) on 64-bit R
_R_SMALL_CLASSES = (1, 2, 4, 6, 8, 16)  # R's small-vector pools, in 8-byte units


def r_vector_bytes(data_bytes: int) -> int:
    """What R allocates for a vector whose data takes `data_bytes`, as `object.size()`
    counts it: the header, then a small-vector size class or, past 128 bytes, the data
    rounded up to 8 bytes."""
    units = math.ceil(data_bytes / 8)
    if units == 0:
        return _R_HEADER_BYTES
    for size_class in _R_SMALL_CLASSES:
        if units <= size_class:
            return _R_HEADER_BYTES + 8 * size_class
    return _R_HEADER_BYTES + 8 * units


def r_strings_bytes(names: Names) -> int:
    """`object.size()` of an R character vector of these (distinct) strings."""
    strings = sum(r_vector_bytes(len(name.encode("utf-8")) + 1) for name in names)
    return r_vector_bytes(8 * len(names)) + strings


def name_set_bytes(names: Names) -> int:
    """Bytes one cached name set holds: its Python key and its R vector."""
    python = sys.getsizeof(names) + sum(sys.getsizeof(name) for name in names)
    return python + r_strings_bytes(names)


class NameCache(Generic[V]):
    """`make(names)` once per distinct name set, kept while the sets fit in `max_bytes`."""

    def __init__(
        self,
        max_bytes: int,
        make: Callable[[Names], V],
        size: Callable[[Names], int] = name_set_bytes,
    ) -> None:
        self._make = make
        self._size = size
        # The value carries its size: cachetools sizes values, and ours is the key's.
        self._entries: LRUCache[Names, tuple[V, int]] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda entry: entry[1]
        )

    def get(self, names: Names) -> V:
        entry = self._entries.get(names)
        if entry is None:
            entry = (self._make(names), self._size(names))
            with contextlib.suppress(ValueError):  # larger than the whole cache: not kept
                self._entries[names] = entry
        return entry[0]

    @property
    def bytes(self) -> int:
        return int(self._entries.currsize)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, names: Names) -> bool:
        return names in self._entries
