"""Fan-out: whether a large request is split over idle workers, and how.

A request of many rows for a splittable model (`[serving] splittable`, by default
exactly when the model is batchable) may be cut into contiguous chunks, each scored by
its own idle worker at once, and the answers joined back in order. Only idle workers
are used (quiet ones: the Dispatcher passes over a worker that answered another request
within `quiet_s`), and only when nobody else waits: under load a big request takes one
worker like any other. Answers that came as JSON text are joined as text. Each chunk has at least
`min_chunk_rows` rows, so a split never costs more in per-call overhead than it saves.

Pure: no asyncio, no R. Never reorders rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rscore.r_scorer.protocol import JsonArray, Predictions, prediction_list
from rscore.r_scorer.prototype import TypedColumn, TypedFrame
from rscore.sidecar.config import DEFAULT_MIN_CHUNK_ROWS

Bounds = tuple[tuple[int, int], ...]


def chunk_bounds(
    nrows: int,
    *,
    idle_workers: int,
    waiting: int,
    splittable: bool,
    min_chunk_rows: int = DEFAULT_MIN_CHUNK_ROWS,
) -> Bounds:
    """The row ranges [start, stop) a request is scored in, in order; one range (the
    whole request) when it is not split.

    `idle_workers` counts the worker the request already has; `waiting`: other live
    requests still queued (any of them means the pod is busy: no split). Chunks are as
    even as can be (sizes differ by at most one row), each at least `min_chunk_rows`.
    """
    if min_chunk_rows < 1:
        raise ValueError("min_chunk_rows must be >= 1")
    whole = ((0, nrows),)
    if not splittable or waiting > 0 or idle_workers < 2:
        return whole
    chunks = min(idle_workers, nrows // min_chunk_rows)
    if chunks < 2:
        return whole
    size, extra = divmod(nrows, chunks)
    bounds, start = [], 0
    for index in range(chunks):
        stop = start + size + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return tuple(bounds)


def slice_frame(frame: TypedFrame, start: int, stop: int) -> TypedFrame:
    """Rows [start, stop) of a frame: every column cut the same way."""
    columns = tuple(
        TypedColumn(column.name, column.kind, column.values[start:stop]) for column in frame.columns
    )
    return TypedFrame(columns, stop - start)


def join_predictions(parts: Sequence[Predictions]) -> Predictions:
    """The chunks' predictions as one answer, in chunk order: their JSON texts joined
    as text when every chunk's came as text (long ones do), else one list."""
    if all(isinstance(part, JsonArray) for part in parts):
        return JsonArray.join([part for part in parts if isinstance(part, JsonArray)])
    joined: list[Any] = []
    for part in parts:
        joined.extend(prediction_list(part))
    return joined
