"""Rows and columns per request (issue 13, item 6) and NUL characters (item 11).

At the parse level, with tables: a count over `--max-rows` or `--max-columns` is a
TooLarge (413) naming the limit and its flag, raised as soon as the count is known (a
malformed row or name after it is never looked at); a column name or a string value with
a NUL (U+0000), which R would cut short, is a 400 naming the column (the name's NUL
escaped), in every body format and the V2 infer request. Over HTTP: the statuses and
bodies a client sees, and that the next good request is answered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from test_sidecar import JSON, ServeFactory, serve, slow_bundle  # noqa: F401  (fixtures)

from rscore.cli.main import cli
from rscore.r_scorer.errors import BadRequest, SchemaMismatch, ScoringError, TooLarge
from rscore.r_scorer.payload import (
    DEFAULT_MAX_COLUMNS,
    DEFAULT_MAX_ROWS,
    NO_LIMITS,
    Frame,
    RequestLimits,
    parse_body,
    parse_json,
)
from rscore.r_scorer.prototype import ANY, CHARACTER, FACTOR, NUMERIC, Column, Prototype, coerce
from rscore.sidecar.app import SidecarConfig
from rscore.sidecar.v2 import frame_from_infer

LIMITS = RequestLimits(max_rows=3, max_columns=2)


def split(columns: Any, data: Any) -> dict:
    return {"dataframe_split": {"columns": columns, "data": data}}


def rows(n: int, **values: Any) -> list[dict]:
    return [dict(values) for _ in range(n)]


def tensor(name: str, data: list, shape: list | None = None, datatype: str = "FP64") -> dict:
    shape = [len(data)] if shape is None else shape
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def frame_of(
    document: dict, known: frozenset[str] | None = None, limits: RequestLimits = LIMITS
) -> Frame:
    """The frame the sidecar builds for a body (sent as JSON text) under `limits`."""
    body = orjson.dumps(document)
    if "inputs" in document:
        return frame_from_infer(parse_json(body), limits)[0]
    return parse_body(body, known, limits)


# --- rows and columns ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "known"),
    [
        ({"dataframe_records": rows(3, a=1, b=2)}, None),
        ({"data": rows(3, a=1)}, None),
        (split(["a", "b"], [[1, 2]] * 3), None),
        ({"data": [{"a": 1, f"other{i}": i} for i in range(3)]}, frozenset({"a"})),
        ({"inputs": [tensor("a", [1.0] * 3), tensor("b", [2.0] * 3)]}, None),
        ({"inputs": [tensor("a", [1.0] * 3, shape=[3, 1])]}, None),
    ],
    ids=["records", "data", "split", "unknown-keys-ignored", "v2", "v2-column-shape"],
)
def test_requests_at_the_limits_are_read(document: dict, known: frozenset[str] | None) -> None:
    frame = frame_of(document, known)
    assert frame.nrows == 3
    assert len(frame.columns) <= 2


@pytest.mark.parametrize(
    ("document", "known", "message"),
    [
        ({"dataframe_records": rows(4, a=1)}, None,
         "'dataframe_records' has 4 rows; a request may have at most 3 (--max-rows)"),
        ({"data": rows(4, a=1)}, frozenset({"a"}),
         "'data' has 4 rows; a request may have at most 3 (--max-rows)"),
        ({"data": ["not a record"] * 4}, None, "'data' has 4 rows"),  # counted first
        (split(["a"], [[1]] * 4), None, "'dataframe_split.data' has 4 rows"),
        (split(["a"], ["not a row"] * 4), None, "'dataframe_split.data' has 4 rows"),
        (split(["a", "b", "c"], [[1, 2, 3]]), None,
         "'dataframe_split.columns' has 3 columns; a request may have at most 2 (--max-columns)"),
        (split([1, 2, 3], []), None, "'dataframe_split.columns' has 3 columns"),  # counted first
        ({"data": [{"a": 1}, {"b": 2}, {"c": 3}]}, None,
         "'data' (by record 2) has 3 columns; a request may have at most 2 (--max-columns)"),
        ({"inputs": [tensor(name, [1.0]) for name in "abc"]}, None,
         "'inputs' has 3 columns; a request may have at most 2 (--max-columns)"),
        ({"inputs": [tensor("a", [1.0] * 4)]}, None,
         "input 'a' has 4 rows; a request may have at most 3 (--max-rows)"),
        ({"inputs": [tensor("a", [1.0], shape=[1_000_000_000])]}, None,  # before the data
         "input 'a' has 1,000,000,000 rows"),
    ],
    ids=[
        "records-rows", "data-rows", "rows-counted-first", "split-rows",
        "split-rows-counted-first", "split-columns", "split-columns-counted-first",
        "unchecked-records-columns", "v2-inputs", "v2-rows", "v2-rows-before-data",
    ],
)  # fmt: skip
def test_over_a_limit_is_413_naming_it(
    document: dict, known: frozenset[str] | None, message: str
) -> None:
    with pytest.raises(TooLarge) as caught:
        frame_of(document, known)
    assert message in caught.value.message
    assert caught.value.to_json()["error"]["code"] == "too_large"


def test_default_limits_and_no_limits_offline() -> None:
    assert RequestLimits() == RequestLimits(DEFAULT_MAX_ROWS, DEFAULT_MAX_COLUMNS)
    assert (DEFAULT_MAX_ROWS, DEFAULT_MAX_COLUMNS) == (1_000_000, 10_000)
    config = SidecarConfig()
    assert (config.max_rows, config.max_columns) == (DEFAULT_MAX_ROWS, DEFAULT_MAX_COLUMNS)
    # `rscore predict` of a file has no request limits.
    wide = orjson.dumps(split([f"c{i}" for i in range(DEFAULT_MAX_COLUMNS + 1)], [[]]))
    with pytest.raises(BadRequest, match="must be a list of 10001 values"):
        parse_body(wide, None, NO_LIMITS)
    with pytest.raises(ValueError, match=">= 1"):
        RequestLimits(max_rows=0)


def test_the_cli_defaults_are_the_configs() -> None:
    config = SidecarConfig()
    for command in ("serve", "sidecar"):
        defaults = {param.name: param.default for param in cli.commands[command].params}
        for name in ("max_body_bytes", "max_body_bytes_in_flight", "max_rows", "max_columns"):
            assert defaults[name] == getattr(config, name), (command, name)


# --- NUL characters -----------------------------------------------------------------

CHECKED = Prototype(
    (
        Column("x", NUMERIC),
        Column("s", CHARACTER),
        Column("f", FACTOR, ("a", "b")),
        Column("z", ANY),
    ),
    "ptype.rds",
)
GOOD_ROW = {"x": 1.0, "s": "text", "f": "a", "z": "any"}


def with_row(**changes: Any) -> list[dict]:
    return [GOOD_ROW, {**GOOD_ROW, **changes}]


def coerced(document: dict, prototype: Prototype) -> None:
    """Through the sidecar's whole path: JSON text, frame, coercion."""
    coerce(frame_of(document, prototype.known, RequestLimits()), prototype)


@pytest.mark.parametrize(
    ("document", "prototype", "message"),
    [
        ({"dataframe_records": with_row(s="ab\u0000cd")}, CHECKED, "column 's': row 1"),
        ({"data": with_row(f="a\u0000")}, CHECKED, "column 'f': row 1"),
        ({"data": with_row(z="\u0000")}, CHECKED, "column 'z': row 1"),
        ({"data": [{"u": "ok"}, {"u": None}, {"u": "x\u0000"}]}, Prototype(), "column 'u': row 2"),
        (split(["x", "s", "f", "z"], [[1.0, "\u0000", "a", "z"]]), CHECKED, "column 's': row 0"),
        ({"inputs": [tensor("s", ["a", "b\u0000"], datatype="BYTES")]}, Prototype(),
         "column 's': row 1"),
    ],
    ids=["records-character", "data-factor", "any", "unchecked", "split", "v2-bytes"],
)  # fmt: skip
def test_a_string_with_a_nul_is_400_naming_the_column(
    document: dict, prototype: Prototype, message: str
) -> None:
    with pytest.raises(SchemaMismatch) as caught:
        coerced(document, prototype)
    assert message in caught.value.message
    assert "NUL character (U+0000)" in caught.value.message


@pytest.mark.parametrize(
    "document",
    [
        split(["x", "a\u0000b"], [[1.0, 2.0]]),
        {"data": [{"x": 1.0, "a\u0000b": 2.0}]},
        {"dataframe_records": [{"x": 1.0}, {"a\u0000b": 2.0}]},
        {"inputs": [tensor("a\u0000b", [2.0])]},
    ],
    ids=["split", "data", "records-later-row", "v2"],
)
def test_a_column_name_with_a_nul_is_400_showing_it_escaped(document: dict) -> None:
    with pytest.raises(BadRequest) as caught:
        coerced(document, Prototype())
    assert "column name 'a\\x00b' has a NUL character (U+0000)" in caught.value.message


def test_what_r_never_sees_is_not_refused() -> None:
    # A key the model does not know never becomes a column, NUL or not; an escaped
    # backslash followed by u0000 is six ordinary characters.
    coerced({"data": [{**GOOD_ROW, "ignored\u0000": "\u0000"}]}, CHECKED)
    coerced({"data": [{**GOOD_ROW, "s": "\\u0000"}]}, CHECKED)


# --- over HTTP ----------------------------------------------------------------------


async def test_limits_and_nuls_over_http(
    serve: ServeFactory,  # noqa: F811
    slow_bundle: Path,  # noqa: F811
) -> None:
    served = await serve(slow_bundle, config=SidecarConfig(max_rows=5, max_columns=3))
    infer_path = f"/v2/models/{served.pool.model.name}/infer"
    cases: list[tuple[str, dict, int, str]] = [
        ("/score", {"data": rows(6, x=1)}, 413, "at most 5 (--max-rows)"),
        ("/score", split(["x", "a", "b", "c"], [[1, 2, 3, 4]]), 413, "at most 3 (--max-columns)"),
        (infer_path, {"inputs": [tensor(n, [1.0]) for n in "xabc"]}, 413, "(--max-columns)"),
        (infer_path, {"inputs": [tensor("x", [1.0] * 6)]}, 413, "(--max-rows)"),
        ("/score", {"data": [{"x": 1, "s": "ab\u0000cd"}]}, 400, "column 's': row 0"),
        ("/score", split(["x", "a\u0000b"], [[1, 2]]), 400, "column name 'a\\x00b'"),
        (infer_path, {"inputs": [tensor("x", [1.0]), tensor("s", ["\u0000"], datatype="BYTES")]},
         400, "column 's': row 0"),
    ]  # fmt: skip
    for path, document, status, message in cases:
        response = await served.client.post(path, data=orjson.dumps(document), headers=JSON)
        body = await response.json()
        assert response.status == status, (path, document, body)
        error = body["error"]
        text = error if path == infer_path else error["message"]  # V2's error shape
        assert message in text
    response = await served.client.post("/score", json={"data": rows(5, x=2)})
    assert response.status == 200
    assert await response.json() == {"predictions": [4.0] * 5}


def test_too_large_is_a_scoring_error_with_the_contract_code() -> None:
    assert issubclass(TooLarge, ScoringError)
    assert TooLarge("x").to_json() == {"error": {"code": "too_large", "message": "x"}}
