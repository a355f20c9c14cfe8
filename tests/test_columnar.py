"""Columnar large requests: numeric columns coerced as numpy arrays, carried as raw
bytes in the worker protocol, copied into R as blocks, and answers read back as blocks.

Each path must give exactly what the per-value path gives: the same R vectors (NA as
R's NA, never NaN), the same Python values back, the same errors for bad values.
Real R in this process for the conversions.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
import pytest

from rscore.r_scorer import protocol
from rscore.r_scorer.errors import ProtocolError, SchemaMismatch
from rscore.r_scorer.payload import parse_body
from rscore.r_scorer.prototype import (
    COLUMNAR_ROWS,
    FACTOR,
    NUMERIC,
    Column,
    Prototype,
    TypedColumn,
    TypedFrame,
    coerce,
)
from rscore.r_scorer.rmodel import start_r
from rscore.sidecar.batching import merge_frames

LONG = COLUMNAR_ROWS * 3


def numbers(count: int) -> list[Any]:
    """Floats, whole numbers and nulls, as a JSON body would hold them."""
    return [None if i % 7 == 3 else (i if i % 2 else i / 3) for i in range(count)]


def test_a_long_numeric_column_is_one_float64_array_nan_for_null() -> None:
    prototype = Prototype((Column("x", NUMERIC),), "terms")
    body = orjson.dumps({"data": [{"x": value} for value in numbers(LONG)]})
    (column,) = coerce(parse_body(body), prototype).columns
    assert isinstance(column.values, np.ndarray)
    assert column.values.dtype == np.float64
    expected = [np.nan if value is None else float(value) for value in numbers(LONG)]
    np.testing.assert_array_equal(column.values, expected)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (True, "column 'x' must be a number (or null); row 100 has boolean"),
        ("1.5", "column 'x' must be a number (or null); row 100 has string '1.5'"),
        ([1], "column 'x' must be a number (or null); row 100 has array"),
    ],
    ids=["boolean", "string", "array"],
)
def test_a_long_column_with_a_non_number_names_its_row(bad: Any, message: str) -> None:
    prototype = Prototype((Column("x", NUMERIC),), "terms")
    values: list[Any] = [1.0] * LONG
    values[100] = bad
    body = orjson.dumps({"data": [{"x": value} for value in values]})
    with pytest.raises(SchemaMismatch, match="^" + re.escape(message)):
        coerce(parse_body(body), prototype)


def test_a_short_column_stays_a_list() -> None:
    prototype = Prototype((Column("x", NUMERIC),), "terms")
    body = orjson.dumps({"data": [{"x": 1}]})
    assert coerce(parse_body(body), prototype).columns[0].values == [1.0]


def long_frame() -> TypedFrame:
    floats = np.array([np.nan if v is None else float(v) for v in numbers(LONG)])
    codes = [None if i % 5 == 0 else 1 + i % 3 for i in range(LONG)]
    return TypedFrame((TypedColumn("x", NUMERIC, floats), TypedColumn("f", FACTOR, codes)), LONG)


def test_numpy_columns_travel_as_raw_bytes_and_come_back_equal() -> None:
    frame = long_frame()
    framed = protocol.encode(protocol.score_request(7, frame, 1.5))
    body = framed[protocol.HEADER.size :]
    assert protocol.frame_length(framed[: protocol.HEADER.size]) == len(body)
    assert body[:1] == protocol.BINARY
    assert len(body) < 8 * LONG + 2_000  # the numbers as 8 bytes each, not as text
    message = protocol.decode(body)
    assert (message["id"], message["timeout_s"]) == (7, 1.5)
    decoded = protocol.frame_of_request(message)
    np.testing.assert_array_equal(decoded.columns[0].values, frame.columns[0].values)
    assert decoded.columns[1] == frame.columns[1]
    assert decoded.nrows == LONG


def test_list_columns_stay_json() -> None:
    frame = TypedFrame((TypedColumn("x", NUMERIC, [1.0, None]),), 2)
    body = protocol.encode(protocol.score_request(1, frame))[protocol.HEADER.size :]
    assert body[:1] == b"{"


def _binary(head: dict[str, Any], blob: bytes) -> bytes:
    encoded = orjson.dumps(head)
    return protocol.BINARY + protocol.HEADER.pack(len(encoded)) + encoded + blob


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (protocol.BINARY + b"\x00", "too short"),
        (_binary({"op": "score"}, b""), "without columns"),
        (_binary({"columns": [["x", NUMERIC, {"float64": 2}]]}, b"\x00" * 8), "not within"),
        (_binary({"columns": [["x", NUMERIC, {"float64": -1}]]}, b""), "not within"),
        (_binary({"columns": [["x", NUMERIC, {"float64": 1}]]}, b"\x00" * 9), "1 bytes after"),
        (protocol.BINARY + protocol.HEADER.pack(3) + b"{no", "not JSON"),
    ],
    ids=["short", "no-columns", "block-past-end", "negative", "trailing", "bad-json"],
)
def test_a_malformed_binary_frame_is_a_protocol_error(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.decode(body)


def test_merging_a_numpy_column_with_a_list_keeps_every_value_in_order() -> None:
    long = TypedFrame((TypedColumn("x", NUMERIC, np.array([1.0, np.nan] * 40)),), 80)
    short = TypedFrame((TypedColumn("x", NUMERIC, [None, 2.0]),), 2)
    merged = merge_frames([short, long])
    np.testing.assert_array_equal(merged.columns[0].values, [np.nan, 2.0] + [1.0, np.nan] * 40)


# --- R --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r() -> Any:
    start_r()
    import rpy2.rinterface as ri

    return ri


def r_identical(r: Any, a: Any, b: Any) -> bool:
    return bool(r.baseenv["identical"](a, b)[0])


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("numeric", [None if i % 4 == 0 else i / 7 for i in range(LONG)]),
        ("integer", [None if i % 4 == 0 else i - 50 for i in range(LONG)]),
        ("logical", [None if i % 4 == 0 else i % 3 == 0 for i in range(LONG)]),
        ("factor", [None if i % 4 == 0 else 1 + i % 2 for i in range(LONG)]),
        ("date", [None if i % 4 == 0 else float(i) for i in range(LONG)]),
        ("datetime", [None if i % 4 == 0 else i * 3600.5 for i in range(LONG)]),
    ],
)
def test_columnar_r_vectors_are_identical_to_value_by_value(
    r: Any, kind: str, values: list[Any]
) -> None:
    from rscore.r_scorer import rconvert

    levels = ("a", "b")
    columnar = rconvert.r_vector(kind, values, levels)
    by_value = [rconvert.r_vector(kind, values[i : i + 1], levels) for i in range(len(values))]
    joined = r.baseenv["c"](*by_value)
    # c() of factors, Dates and POSIXct keeps their class in R 4.1+; compare values
    # and attributes both.
    assert r_identical(r, columnar, joined)
    assert r.baseenv["sum"](r.baseenv["is.na"](columnar))[0] == values.count(None)
    if kind == "numeric":
        assert not any(r.baseenv["is.nan"](columnar))  # R's NA, not NaN
    if kind == "numeric":  # a numpy array (what the protocol carries) gives the same
        as_array = np.array([np.nan if v is None else v for v in values])
        assert r_identical(r, rconvert.r_vector(kind, as_array), columnar)


@pytest.mark.parametrize(
    "code",
    [
        "c(rep(c(1.5, NA, NaN, Inf, -Inf, -0.25), 50))",
        "rep(c(1L, NA, -7L), 100)",
        "rep(c(TRUE, NA, FALSE), 100)",
        'rep(c("a", NA, "b", "\u00e9t\u00e9", ""), 60)',
    ],
    ids=["double", "integer", "logical", "character"],
)
def test_long_answers_read_back_as_value_by_value(r: Any, code: str) -> None:
    from rscore.r_scorer import rconvert

    vector = r.baseenv["eval"](r.parse(code))
    assert len(vector) >= COLUMNAR_ROWS
    short = [rconvert.python_values(vector[i : i + 1])[0] for i in range(len(vector))]
    long = rconvert.python_values(vector)
    assert long == short
    assert [type(value) for value in long] == [type(value) for value in short]


# --- answers as JSON text -----------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "c(rep(c(1.5, NA, NaN, Inf, -Inf, -0.25, 1/3, 1e300, 5e-324), 40))",
        "seq(0.5, 400, by = 0.5)",
        "rep(c(1L, NA, -7L), 100)",
        "rep(c(1L, 2L, -7L), 100)",
        "rep(c(TRUE, NA, FALSE), 100)",
        "rep(c(TRUE, FALSE), 100)",
        'rep(c("a", NA, "b", "\u00e9t\u00e9", "", "q\\"uote"), 60)',
        'factor(rep(c("setosa", "virginica", NA), 100))',
        "c(2.5, NA, 3L)",
        "cbind(p = seq(0, 1, length.out = 300), q = rev(seq(0, 1, length.out = 300)))",
        "data.frame(x = 1:300, y = rep(c('a', NA), 150))",
    ],
    ids=[
        "double-non-finite", "double", "integer-na", "integer", "logical-na", "logical",
        "character", "factor", "short", "matrix", "data-frame",
    ],
)  # fmt: skip
def test_an_answer_as_json_text_is_what_its_values_encode_to(r: Any, code: str) -> None:
    from rscore.r_scorer import rconvert

    value = r.baseenv["eval"](r.parse(code))
    nrows = r.baseenv["NROW"](value)[0]
    answer = start_r()[".shape_result"](value, r.IntSexpVector([nrows]))
    predictions = rconvert.python_predictions(answer)
    as_json = rconvert.json_predictions(answer)
    assert as_json.text == orjson.dumps(predictions)
    assert as_json.count == len(predictions) == nrows
    assert as_json.values() == predictions


def test_a_json_answer_travels_as_its_text_and_is_never_parsed() -> None:
    text = orjson.dumps([{"p": 0.5, "label": "a"}, None, 2.5] * 500)
    reply = protocol.ok_reply(9, protocol.JsonArray(text, 1500), 0.25, last=True)
    framed = protocol.encode(reply)
    body = framed[protocol.HEADER.size :]
    assert body[:1] == protocol.BINARY
    assert body.endswith(text)
    message = protocol.decode(body)
    assert message["predictions"] == protocol.JsonArray(text, 1500)
    assert (message["id"], message["ok"], message["r_seconds"], message["last"]) == (
        9, True, 0.25, True,
    )  # fmt: skip
    assert protocol.prediction_list(message["predictions"]) == orjson.loads(text)
    fragment = protocol.prediction_json(message["predictions"])
    assert orjson.dumps({"predictions": fragment}) == b'{"predictions":' + text + b"}"


@pytest.mark.parametrize(
    ("head", "blob", "message"),
    [
        ({"id": 1, "ok": True, "predictions": {"json": 4, "count": 2}}, b"[1,2", "not an array"),
        ({"id": 1, "ok": True, "predictions": {"json": 9, "count": 2}}, b"[1,2]", "fill"),
        ({"id": 1, "ok": True, "predictions": {"json": 5, "count": 2}}, b"[1,2]]", "fill"),
        ({"id": 1, "ok": True, "predictions": {"json": 5, "count": -1}}, b"[1,2]", "count"),
        ({"id": 1, "ok": True, "predictions": {"json": "5", "count": 2}}, b"[1,2]", "json size"),
    ],
    ids=["not-array", "short", "trailing", "negative-count", "size-not-int"],
)
def test_a_malformed_json_answer_is_a_protocol_error(
    head: dict[str, Any], blob: bytes, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.decode(_binary(head, blob))


def test_json_answers_join_as_their_lists_would() -> None:
    parts = [[1.5, None], [], ["a", {"k": [1, 2]}], [True]]
    arrays = [protocol.JsonArray(orjson.dumps(part), len(part)) for part in parts]
    joined = protocol.JsonArray.join(arrays)
    assert joined.text == orjson.dumps([value for part in parts for value in part])
    assert joined.count == 5
    assert protocol.JsonArray.join([arrays[1]]) == protocol.JsonArray(b"[]", 0)
