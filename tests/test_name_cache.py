"""The worker's cache of R character vectors (column names, levels), bounded in bytes.

Tables for the size estimate and the LRU cache (no R); then real R: the estimate equals
R's own `object.size()`, and a worker-like process fed many distinct wide name sets
stays within the bound in RSS, where the old cache (1,024 sets, any size) grew by each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from rscore.r_scorer.name_cache import (
    DEFAULT_NAME_CACHE_BYTES,
    NameCache,
    name_set_bytes,
    r_strings_bytes,
    r_vector_bytes,
)


@pytest.mark.parametrize(
    ("data_bytes", "allocated"),
    [
        (0, 48),  # a header only
        (1, 56),  # one 8-byte unit
        (8, 56),
        (9, 64),  # two units
        (17, 80),  # three units: the 4-unit class
        (33, 96),  # five units: the 6-unit class
        (49, 112),  # seven units: the 8-unit class
        (65, 176),  # nine units: the 16-unit class
        (128, 176),
        (129, 48 + 136),  # past 16 units: the data rounded up to 8 bytes
        (8000, 48 + 8000),
    ],
)
def test_r_vector_bytes_follows_rs_size_classes(data_bytes: int, allocated: int) -> None:
    assert r_vector_bytes(data_bytes) == allocated


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ((), 48),
        (("a",), 56 + 56),  # the pointer array (one unit), one CHARSXP of 2 bytes
        (("x" * 20, "y" * 20), 64 + 2 * (48 + 32)),  # 21 bytes each: the 4-unit class
        (("é",), 56 + 56),  # two UTF-8 bytes and the NUL: still one unit
    ],
)
def test_r_strings_bytes(names: tuple[str, ...], expected: int) -> None:
    assert r_strings_bytes(names) == expected


def test_an_entry_counts_its_python_key_too() -> None:
    names = tuple(f"column_{i}" for i in range(100))
    python = sys.getsizeof(names) + sum(sys.getsizeof(name) for name in names)
    assert name_set_bytes(names) == python + r_strings_bytes(names)


def sized(cache_bytes: int) -> tuple[NameCache[str], list[tuple[str, ...]]]:
    """A cache whose entries weigh 10 bytes per name; `made` lists each build."""
    made: list[tuple[str, ...]] = []

    def make(names: tuple[str, ...]) -> str:
        made.append(names)
        return "|".join(names)

    return NameCache(cache_bytes, make, size=lambda names: 10 * len(names)), made


A, B, C = ("a",) * 3, ("b",) * 3, ("c",) * 3  # 30 bytes each
BIG = ("z",) * 20  # 200 bytes


@pytest.mark.parametrize(
    ("bound", "gets", "kept", "builds"),
    [
        (100, [A, B, C], {A, B, C}, 3),  # 90 bytes fit
        (60, [A, B, C], {B, C}, 3),  # the oldest goes
        (60, [A, B, A, C], {A, C}, 3),  # A was used again: B is the least recent
        (60, [A, A, A], {A}, 1),  # built once
        (60, [A, B, C, A], {C, A}, 4),  # A was evicted, so built again
        (100, [BIG, A], {A}, 2),  # larger than the whole bound: served, not kept
        (100, [A, BIG, BIG], {A}, 3),  # ... and built each time, never evicting A
    ],
)
def test_least_recently_used_sets_go_past_the_byte_bound(
    bound: int, gets: list[tuple[str, ...]], kept: set[tuple[str, ...]], builds: int
) -> None:
    cache, made = sized(bound)
    for names in gets:
        assert cache.get(names) == "|".join(names)
    assert {names for names in (A, B, C, BIG) if names in cache} == kept
    assert cache.bytes == sum(10 * len(names) for names in kept) <= bound
    assert len(made) == builds


# --- real R ------------------------------------------------------------------------

_OBJECT_SIZES = textwrap.dedent(
    """
    import json, sys
    from rscore.r_scorer.rmodel import start_r
    start_r()
    import rpy2.rinterface as ri
    object_size = ri.baseenv["getNamespace"](ri.StrSexpVector(["utils"]))["object.size"]
    sets = json.loads(sys.stdin.read())
    print(json.dumps([object_size(ri.StrSexpVector(names))[0] for names in sets]))
    """
)


def test_the_estimate_is_rs_own_object_size() -> None:
    sets = [
        [],
        ["a"],
        [f"col_{i}" for i in range(10)],
        [f"a_rather_long_column_name_number_{i:06d}" for i in range(2000)],
        ["café", "naïve", "日本語の列", "x" * 300],
    ]
    done = subprocess.run(
        [sys.executable, "-c", _OBJECT_SIZES],
        input=json.dumps(sets),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    r_sizes = json.loads(done.stdout)
    assert [r_strings_bytes(tuple(names)) for names in sets] == r_sizes


# A worker's conversion path (rconvert.r_data_frame, as the worker calls it) fed distinct
# pass-through name sets: 400 sets of 2,000 columns of one row, ~150 MiB of names as the
# estimate counts them. With a bound given, the cache is replaced by one of that many
# bytes (0: nothing kept, what the same work costs without any cache). Prints RSS growth.
_MANY_NAME_SETS = textwrap.dedent(
    """
    import gc, json, os, sys
    from rscore.r_scorer.rmodel import start_r
    start_r()
    import rpy2.rinterface as ri
    from rscore.r_scorer import rconvert
    from rscore.r_scorer.name_cache import NameCache, name_set_bytes
    from rscore.r_scorer.prototype import NUMERIC, TypedColumn, TypedFrame

    if len(sys.argv) > 3:
        rconvert._names = NameCache(int(sys.argv[3]), ri.StrSexpVector)

    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    sets, width = int(sys.argv[1]), int(sys.argv[2])
    estimated = 0
    gc.collect(); ri.baseenv["gc"]()
    before = rss()
    for s in range(sets):
        names = [f"set{s:04d}_a_pass_through_column_{i:05d}" for i in range(width)]
        estimated += name_set_bytes(tuple(names))
        frame = TypedFrame(tuple(TypedColumn(n, NUMERIC, [1.0]) for n in names), 1)
        rconvert.r_data_frame(frame, {})
        del frame, names
    cache = rconvert._names
    print(json.dumps({
        "rss_growth": rss() - before, "estimated_all": estimated,
        "cache_bytes": cache.bytes, "cache_sets": len(cache),
    }))
    """
)


def many_name_sets(*bound: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _MANY_NAME_SETS, "400", "2000", *bound],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.real_r
def test_a_worker_fed_many_wide_name_sets_stays_within_the_bound() -> None:
    """The old cache kept 1,024 sets whatever their size: here RSS grew by 166 MiB more
    than with no cache at all (and by ~10 MB per set of 50,000 names)."""
    measured = many_name_sets()  # the worker's own cache, at its default bound
    without_cache = many_name_sets("0")
    bound = DEFAULT_NAME_CACHE_BYTES
    assert measured["estimated_all"] > 4 * bound  # enough to overflow the cache 4 times
    assert measured["cache_bytes"] <= bound
    assert 0 < measured["cache_sets"] < 400
    # What the cache costs in RSS beyond the same work without it: the bound, and about
    # as much again that R's collector leaves between collections for a larger live heap
    # (measured: 35 MiB for this 16 MiB bound; the old cache cost 166 MiB here).
    cost = measured["rss_growth"] - without_cache["rss_growth"]
    assert cost < 3 * bound, (measured, without_cache)
