"""The batching plan: who may share an R call, merging frames, splitting answers."""

from __future__ import annotations

import pytest

from rscore.r_scorer.prototype import TypedColumn, TypedFrame
from rscore.sidecar.batching import can_join, merge_frames, signature, split_predictions


def frame(nrows: int, *, kinds: tuple[tuple[str, str], ...] = (("x", "numeric"),)) -> TypedFrame:
    columns = tuple(
        TypedColumn(name, kind, [float(i) for i in range(nrows)]) for name, kind in kinds
    )
    return TypedFrame(columns, nrows)


NUMERIC_X = (("x", "numeric"),)


@pytest.mark.parametrize(
    ("batch_rows", "batch_signature", "candidate", "max_rows", "joins"),
    [
        (1, NUMERIC_X, frame(1), 256, True),
        (255, NUMERIC_X, frame(1), 256, True),
        (255, NUMERIC_X, frame(2), 256, False),  # over the row limit
        (1, NUMERIC_X, frame(1, kinds=(("x", "logical"),)), 256, False),  # other kind
        (1, NUMERIC_X, frame(1, kinds=(("y", "numeric"),)), 256, False),  # other column
        (1, (("a", "numeric"), ("b", "numeric")),
         frame(1, kinds=(("b", "numeric"), ("a", "numeric"))), 256, False),  # other order
        (0, NUMERIC_X, frame(0), 1, True),  # zero rows always fit
    ],
    ids=["fits", "fills", "over-limit", "other-kind", "other-column", "other-order", "empty"],
)  # fmt: skip
def test_can_join(batch_rows, batch_signature, candidate, max_rows, joins) -> None:
    assert can_join(batch_rows, batch_signature, candidate, max_rows) is joins


def test_merge_keeps_order_and_columns() -> None:
    kinds = (("x", "numeric"), ("f", "factor"))
    first = TypedFrame((TypedColumn("x", "numeric", [1.0]), TypedColumn("f", "factor", [2])), 1)
    second = TypedFrame(
        (TypedColumn("x", "numeric", [2.0, None]), TypedColumn("f", "factor", [1, 1])), 2
    )
    merged = merge_frames([first, second])
    assert signature(merged) == kinds
    assert merged.nrows == 3
    assert [c.values for c in merged.columns] == [[1.0, 2.0, None], [2, 1, 1]]
    assert merge_frames([first]) is first


@pytest.mark.parametrize(
    ("predictions", "sizes", "parts"),
    [
        ([1, 2, 3], [1, 2], [[1], [2, 3]]),
        ([1, 2, 3], [3], [[1, 2, 3]]),
        ([1, 2], [0, 2, 0], [[], [1, 2], []]),
        ([{"a": 1}, {"a": 2}], [1, 1], [[{"a": 1}], [{"a": 2}]]),
    ],
    ids=["two", "one", "empty-members", "objects"],
)
def test_split_predictions(predictions, sizes, parts) -> None:
    assert split_predictions(predictions, sizes) == parts


def test_split_refuses_a_wrong_count() -> None:
    with pytest.raises(ValueError, match="3 predictions for 4 rows"):
        split_predictions([1, 2, 3], [2, 2])
