"""Comparisons for tests: rscore's answers against R's own."""

from __future__ import annotations

import math
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
