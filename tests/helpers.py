"""Helpers for tests: rscore's answers against R's own, and waiting for a state.

Tests never sleep to let something happen: they poll the real state (`eventually`)
with a bound, so a slow machine takes longer but never fails for it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

RELATIVE_TOLERANCE = 1e-9


def assert_same_predictions(actual: list[Any], expected: list[Any]) -> None:
    """Equal value by value; numbers within 1e-9 relative; null only where R has NA."""
    assert len(actual) == len(expected), (actual, expected)
    for row, (got, want) in enumerate(zip(actual, expected, strict=True)):
        _assert_same(got, want, f"row {row}")


def _assert_same(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), (where, got)
        assert list(got) == list(want), (where, got, want)
        for key in want:
            _assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, bool) or want is None or isinstance(want, str):
        assert got == want, (where, got, want)
    else:
        assert isinstance(got, int | float), (where, got)
        assert not isinstance(got, bool), (where, got)
        assert math.isclose(got, want, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12), (
            where,
            got,
            want,
        )


async def eventually(
    check: Callable[[], bool], timeout_s: float = 20.0, every_s: float = 0.05
) -> None:
    """Wait until `check()` holds; fail with the timeout otherwise (a bound, not a speed).

    Counted on the event loop's clock, so a test on fake time (looptime) waits in it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(every_s)
