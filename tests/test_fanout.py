"""Fan-out's decision: whether a large request is split over idle workers, in which
contiguous chunks, and how chunks are cut and joined (a table; pure functions).

The Dispatcher's shell around it is tests/test_fanout_dispatch.py.
"""

from __future__ import annotations

import itertools

import orjson
import pytest

from rscore.r_scorer.protocol import JsonArray
from rscore.r_scorer.prototype import TypedColumn, TypedFrame
from rscore.sidecar.fanout import chunk_bounds, join_predictions, slice_frame


@pytest.mark.parametrize(
    ("nrows", "idle", "waiting", "splittable", "min_rows", "expected"),
    [
        # Split evenly over every idle worker; sizes differ by one row at most.
        (100, 2, 0, True, 10, ((0, 50), (50, 100))),
        (101, 3, 0, True, 10, ((0, 34), (34, 68), (68, 101))),
        # No more chunks than min_rows allows: 25 rows of >= 10 are 2 chunks.
        (25, 4, 0, True, 10, ((0, 13), (13, 25))),
        # Too small to be worth a second worker.
        (19, 4, 0, True, 10, ((0, 19),)),
        (0, 4, 0, True, 10, ((0, 0),)),
        # Exactly twice the minimum: two chunks.
        (20, 2, 0, True, 10, ((0, 10), (10, 20))),
        # One idle worker (the request's own): nothing to spread over.
        (1000, 1, 0, True, 10, ((0, 1000),)),
        # A busy pod (anyone waiting) takes one worker per request.
        (1000, 4, 1, True, 10, ((0, 1000),)),
        # splittable = false: never.
        (1000, 4, 0, False, 10, ((0, 1000),)),
    ],
)
def test_chunk_bounds(
    nrows: int,
    idle: int,
    waiting: int,
    splittable: bool,
    min_rows: int,
    expected: tuple[tuple[int, int], ...],
) -> None:
    bounds = chunk_bounds(
        nrows, idle_workers=idle, waiting=waiting, splittable=splittable, min_chunk_rows=min_rows
    )
    assert bounds == expected
    # Contiguous, in order, covering every row once.
    assert bounds[0][0] == 0
    assert bounds[-1][1] == nrows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


def test_chunk_bounds_refuses_a_zero_minimum() -> None:
    with pytest.raises(ValueError, match="min_chunk_rows"):
        chunk_bounds(10, idle_workers=2, waiting=0, splittable=True, min_chunk_rows=0)


def test_slice_and_join_are_inverse() -> None:
    frame = TypedFrame(
        (TypedColumn("x", "numeric", [1.0, 2.0, 3.0]), TypedColumn("f", "factor", [1, 2, 1])),
        3,
    )
    parts = [slice_frame(frame, 0, 2), slice_frame(frame, 2, 3)]
    assert [part.nrows for part in parts] == [2, 1]
    assert parts[1].columns[1] == TypedColumn("f", "factor", [1])
    assert join_predictions([part.columns[0].values for part in parts]) == [1.0, 2.0, 3.0]


def test_chunks_answered_as_json_text_join_as_text() -> None:
    parts = [[1.5, None], ["a"], []]
    arrays = [JsonArray(orjson.dumps(part), len(part)) for part in parts]
    joined = join_predictions(arrays)
    assert joined == JsonArray(b'[1.5,null,"a"]', 3)
    assert join_predictions([arrays[0], ["b"]]) == [1.5, None, "b"]  # mixed: one list
