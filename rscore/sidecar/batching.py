"""Dynamic batching: which waiting requests share one R call, and how answers split back.

Requests that wait for a worker of a batchable model may be merged: contiguous from the
head of the queue (first come, first served), with the same columns (names and kinds,
so the R data.frame is well formed), up to `max_batch_rows` rows in all; the first
request always goes, even alone over the limit. R answers the merged frame with one
prediction per row, which are split back per request in order.

Pure: no asyncio, no R. Never reorders requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rscore.r_scorer.prototype import TypedColumn, TypedFrame

Signature = tuple[tuple[str, str], ...]


def signature(frame: TypedFrame) -> Signature:
    """The columns of a frame as R will see them: names and kinds, in order."""
    return tuple((column.name, column.kind) for column in frame.columns)


def can_join(batch_rows: int, batch_signature: Signature, frame: TypedFrame, max_rows: int) -> bool:
    """May `frame` join a batch of `batch_rows` rows with `batch_signature`?"""
    return signature(frame) == batch_signature and batch_rows + frame.nrows <= max_rows


def merge_frames(frames: Sequence[TypedFrame]) -> TypedFrame:
    """One frame with every frame's rows, in order (all share one signature)."""
    if len(frames) == 1:
        return frames[0]
    columns = tuple(
        TypedColumn(first.name, first.kind, _joined([frame.columns[index] for frame in frames]))
        for index, first in enumerate(frames[0].columns)
    )
    return TypedFrame(columns, sum(frame.nrows for frame in frames))


def _joined(parts: Sequence[TypedColumn]) -> Any:
    """One column's values over every frame: a numpy array if any part is one (long
    numeric columns are), NaN standing for None as it does there."""
    if any(isinstance(part.values, np.ndarray) for part in parts):
        return np.concatenate([np.asarray(part.values, dtype=np.float64) for part in parts])
    return [value for part in parts for value in part.values]


def split_predictions(predictions: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
    """Cut a merged batch's predictions back into one list per request."""
    if len(predictions) != sum(sizes):
        raise ValueError(f"{len(predictions)} predictions for {sum(sizes)} rows")
    parts, start = [], 0
    for size in sizes:
        parts.append(list(predictions[start : start + size]))
        start += size
    return parts
