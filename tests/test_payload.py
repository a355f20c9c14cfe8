"""Request bodies of POST /score: the three formats and every malformed shape."""

import json
import math

import orjson
import pytest

from rscore.r_scorer.errors import BadRequest
from rscore.r_scorer.payload import (
    BODY_FORMATS,
    MAX_UNCHECKED_COLUMNS,
    Frame,
    frame_from_document,
    frame_from_records,
    frame_from_split,
    json_type,
    parse_body,
    parse_json,
)


def rejected(body) -> BadRequest:
    """parse_body's BadRequest for `body`, checked for its code and its JSON form."""
    with pytest.raises(BadRequest) as caught:
        parse_body(body)
    error = caught.value
    assert error.code == "bad_request"
    assert str(error) == error.message
    assert error.to_json() == {"error": {"code": "bad_request", "message": error.message}}
    return error


RECORDS = [{"x1": 1.0, "f": "a"}, {"x1": 2.5, "f": "b"}]
EXPECTED = Frame({"x1": [1.0, 2.5], "f": ["a", "b"]}, 2)


def test_body_formats_are_the_contract_ones():
    assert BODY_FORMATS == ("dataframe_records", "dataframe_split", "data")


@pytest.mark.parametrize(
    "document",
    [
        {"dataframe_records": RECORDS},
        {"dataframe_split": {"columns": ["x1", "f"], "data": [[1.0, "a"], [2.5, "b"]]}},
        {"data": RECORDS},
    ],
    ids=["dataframe_records", "dataframe_split", "data"],
)
def test_each_format_gives_the_same_frame(document):
    assert parse_body(orjson.dumps(document)) == EXPECTED
    assert parse_body(orjson.dumps(document).decode()) == EXPECTED
    assert frame_from_document(document) == EXPECTED


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"dataframe_records": []}, Frame({}, 0)),
        ({"data": []}, Frame({}, 0)),
        ({"dataframe_split": {"columns": [], "data": []}}, Frame({}, 0)),
        ({"dataframe_split": {"columns": ["a", "b"], "data": []}}, Frame({"a": [], "b": []}, 0)),
        ({"dataframe_records": [{}, {}]}, Frame({}, 2)),
        ({"dataframe_split": {"columns": [], "data": [[], []]}}, Frame({}, 2)),
    ],
    ids=[
        "records-empty",
        "data-empty",
        "split-no-columns-no-rows",
        "split-columns-no-rows",
        "records-of-empty-objects",
        "split-empty-rows",
    ],
)
def test_empty_bodies(document, expected):
    frame = frame_from_document(document)
    assert frame == expected
    assert list(frame.columns) == list(expected.columns)


@pytest.mark.parametrize(
    ("records", "columns"),
    [
        ([{"b": 1, "a": 2}], ["b", "a"]),
        ([{"b": 1}, {"a": 2, "b": 3}], ["b", "a"]),
        ([{"z": 1}, {"y": 2}, {"x": 3, "z": 4}], ["z", "y", "x"]),
        ([{"a": 1, "b": 2}, {"b": 3, "a": 4}], ["a", "b"]),
    ],
    ids=["object-order", "later-key-appended", "three-records", "reordered-later"],
)
def test_records_columns_in_first_seen_order(records, columns):
    frame = frame_from_records(records)
    assert list(frame.columns) == columns


def test_records_values_follow_their_keys_not_positions():
    frame = frame_from_records([{"a": 1, "b": 2}, {"b": 3, "a": 4}])
    assert frame.columns == {"a": [1, 4], "b": [2, 3]}


def test_split_column_order_is_the_declared_order():
    frame = frame_from_split({"columns": ["z", "a", "m"], "data": [[1, 2, 3], [4, 5, 6]]})
    assert list(frame.columns) == ["z", "a", "m"]
    assert frame.columns == {"z": [1, 4], "a": [2, 5], "m": [3, 6]}
    assert frame.nrows == 2


def test_key_absent_from_some_records_becomes_none():
    frame = frame_from_records([{"a": 1}, {"b": "x"}, {"a": 3, "b": None}])
    assert frame == Frame({"a": [1, None, 3], "b": [None, "x", None]}, 3)


def test_explicit_null_kept_as_none():
    frame = parse_body(b'{"data": [{"a": null}, {"a": 2}]}')
    assert frame == Frame({"a": [None, 2]}, 2)


def test_values_pass_through_untyped():
    """payload never guesses types: strings stay strings, nested values stay nested."""
    records = [{"n": "1.5", "b": True, "l": [1, 2], "o": {"k": 1}, "i": 3}]
    frame = frame_from_records(records)
    assert frame.columns == {"n": ["1.5"], "b": [True], "l": [[1, 2]], "o": [{"k": 1}], "i": [3]}
    assert type(frame.columns["i"][0]) is int


def test_extra_top_level_keys_beside_one_format_are_ignored():
    frame = frame_from_document({"dataframe_records": [{"a": 1}], "params": {"k": 1}})
    assert frame == Frame({"a": [1]}, 1)


def test_records_field_name_defaults_to_dataframe_records():
    with pytest.raises(BadRequest, match=r"^'dataframe_records' must be a list"):
        frame_from_records({"a": 1})


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b"", ["body is not valid JSON"]),
        (b"{", ["body is not valid JSON"]),
        (b"not json", ["body is not valid JSON"]),
        (b'{"data": [}', ["body is not valid JSON"]),
        (b"\xff\xfe", ["body is not valid JSON"]),
        (b"NaN", ["body is not valid JSON"]),
        (b"[]", ["body must be a JSON object", "'dataframe_records'", "'data'"]),
        (b"[{}]", ["body must be a JSON object"]),
        (b"null", ["body must be a JSON object"]),
        (b"42", ["body must be a JSON object"]),
        (b'"dataframe_records"', ["body must be a JSON object"]),
        (b"{}", ["exactly one of", "found no keys"]),
        (b'{"rows": [], "inputs": []}', ["exactly one of", "found inputs, rows"]),
        (
            b'{"dataframe_records": [], "data": []}',
            ["exactly one of", "found data, dataframe_records"],
        ),
        (
            b'{"dataframe_records": [], "dataframe_split": {}, "data": []}',
            ["exactly one of", "found data, dataframe_records, dataframe_split"],
        ),
        (b'{"dataframe_records": {"a": 1}}', ["'dataframe_records' must be a list of objects"]),
        (b'{"dataframe_records": "a"}', ["'dataframe_records' must be a list of objects"]),
        (b'{"dataframe_records": null}', ["'dataframe_records' must be a list of objects"]),
        (b'{"data": {"a": [1]}}', ["'data' must be a list of objects"]),
        (b'{"dataframe_records": [1]}', ["'dataframe_records'[0] must be an object, got number"]),
        (
            b'{"dataframe_records": [{"a": 1}, [1]]}',
            ["'dataframe_records'[1] must be an object, got array"],
        ),
        (b'{"data": [{}, {}, "x"]}', ["'data'[2] must be an object, got string"]),
        (b'{"data": [null]}', ["'data'[0] must be an object, got null"]),
        (b'{"data": [true]}', ["'data'[0] must be an object, got boolean"]),
        (b'{"dataframe_split": []}', ["'dataframe_split' must be an object"]),
        (b'{"dataframe_split": null}', ["'dataframe_split' must be an object"]),
        (
            b'{"dataframe_split": {"data": [[1]]}}',
            ["'dataframe_split.columns' must be a list of column names"],
        ),
        (
            b'{"dataframe_split": {"columns": "a", "data": [[1]]}}',
            ["'dataframe_split.columns' must be a list of column names"],
        ),
        (
            b'{"dataframe_split": {"columns": ["a", 1], "data": [[1, 2]]}}',
            ["'dataframe_split.columns' must be a list of column names"],
        ),
        (
            b'{"dataframe_split": {"columns": ["a", null], "data": []}}',
            ["'dataframe_split.columns' must be a list of column names"],
        ),
        (
            b'{"dataframe_split": {"columns": ["a", "b", "a"], "data": [[1, 2, 3]]}}',
            ["'dataframe_split.columns' names a column twice"],
        ),
        (
            b'{"dataframe_split": {"columns": ["a"]}}',
            ["'dataframe_split.data' must be a list of rows"],
        ),
        (
            b'{"dataframe_split": {"columns": ["a"], "data": {"a": [1]}}}',
            ["'dataframe_split.data' must be a list of rows"],
        ),
        (
            b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3]]}}',
            ["'dataframe_split.data'[1] must be a list of 2 values, one per column"],
        ),
        (
            b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2, 3]]}}',
            ["'dataframe_split.data'[0] must be a list of 2 values, one per column"],
        ),
        (
            b'{"dataframe_split": {"columns": ["a"], "data": [[1], [2], 3]}}',
            ["'dataframe_split.data'[2] must be a list of 1 values"],
        ),
        (
            b'{"dataframe_split": {"columns": ["a"], "data": [[1], {"a": 2}]}}',
            ["'dataframe_split.data'[1] must be a list of 1 values"],
        ),
        (
            b'{"dataframe_split": {"columns": [], "data": [[1]]}}',
            ["'dataframe_split.data'[0] must be a list of 0 values"],
        ),
    ],
    ids=[
        "empty-body",
        "truncated",
        "bare-words",
        "broken-array",
        "invalid-utf8",
        "nan-literal",
        "top-level-array",
        "top-level-array-of-object",
        "top-level-null",
        "top-level-number",
        "top-level-string",
        "no-keys",
        "no-format-key",
        "two-format-keys",
        "three-format-keys",
        "records-object",
        "records-string",
        "records-null",
        "data-object",
        "record-number",
        "record-array-at-1",
        "data-record-string-at-2",
        "data-record-null",
        "data-record-boolean",
        "split-array",
        "split-null",
        "split-without-columns",
        "split-columns-string",
        "split-columns-non-string",
        "split-columns-null-name",
        "split-duplicate-columns",
        "split-without-data",
        "split-data-object",
        "split-row-short",
        "split-row-long",
        "split-row-not-list",
        "split-row-object",
        "split-row-for-no-columns",
    ],
)
def test_malformed_bodies_name_the_problem(body, fragments):
    error = rejected(body)
    for fragment in fragments:
        assert fragment in error.message


def test_not_json_error_does_not_chain_the_decoder_exception():
    error = rejected(b"{")
    assert error.__cause__ is None
    assert error.__suppress_context__ is True


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "null"),
        (True, "boolean"),
        (False, "boolean"),
        (0, "number"),
        (1.5, "number"),
        (-3, "number"),
        ("", "string"),
        ("x", "string"),
        ([], "array"),
        ([1], "array"),
        ({}, "object"),
        ({"a": 1}, "object"),
    ],
    ids=[
        "null",
        "true",
        "false",
        "zero",
        "float",
        "negative",
        "empty-string",
        "string",
        "empty-array",
        "array",
        "empty-object",
        "object",
    ],
)
def test_json_type(value, name):
    assert json_type(value) == name


# --- Python's NaN and Infinity: named, with the hint to send null -----------------------

HINT = "JSON has no NaN or Infinity; send null for a missing value"


def python_json(document: object, **kwargs: object) -> str:
    """A body as Python's json.dumps writes it: NaN, Infinity and -Infinity included."""
    return json.dumps(document, **kwargs)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (python_json({"data": [{"a": math.nan}]}), "NaN at line 1 column 17"),
        (python_json({"data": [{"a": math.inf}]}), "Infinity at line 1 column 17"),
        (python_json({"data": [{"a": -math.inf}]}), "-Infinity at line 1 column 17"),
        (
            python_json({"data": [{"a": 1.0}, {"a": -math.inf}]}, indent=2),
            "-Infinity at line 7 column 12",
        ),
        (
            python_json({"dataframe_split": {"columns": ["a"], "data": [[math.nan]]}}),
            "NaN at line 1 column 50",
        ),
        (python_json([math.nan]), "NaN at line 1 column 2"),
        (python_json(math.inf), "Infinity at line 1 column 1"),
        (python_json({"data": [{"é😀": math.nan}]}, ensure_ascii=False), "NaN at line 1 column 18"),
        (
            python_json({"data": [{"é😀": math.nan}]}, ensure_ascii=False).encode(),
            "NaN at line 1 column 18",
        ),
    ],
    ids=[
        "nan",
        "infinity",
        "minus-infinity",
        "indented-minus-infinity",
        "split-nan",
        "top-level-array",
        "top-level-infinity",
        "non-ascii-before-it-str",
        "non-ascii-before-it-bytes",
    ],
)
def test_python_nan_and_infinity_are_named_with_their_position(body, expected):
    assert rejected(body).message == f"body is not valid JSON: {expected} — {HINT}"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"data": [{"a": 1},, {"a": NaN}]}',
            ["line 1 column 20", "; also NaN at line 1 column 28", HINT],
        ),
        (b'{"data": [{"a": "NaN"}, x]}', ["unexpected character", "line 1 column 25"]),
        (b'{"data": [{"Infinity": 1}, }', ["line 1 column 28"]),
        (b'{"data": [{"a": "unterminated NaN', ["unexpected end of data"]),
        (b'{"data": [{"a": nan}]}', ["line 1 column 17"]),
    ],
    ids=[
        "nan-after-another-error",
        "nan-only-inside-a-string",
        "infinity-only-as-a-key",
        "nan-inside-an-unterminated-string",
        "lowercase-nan-is-not-pythons",
    ],
)
def test_other_json_errors_keep_the_parsers_message(body, expected):
    message = rejected(body).message
    assert message.startswith("body is not valid JSON: ")
    for fragment in expected:
        assert fragment in message
    if HINT not in expected:
        assert "NaN or Infinity" not in message


def test_parse_json_is_what_parse_body_parses():
    assert parse_json(b'{"data": [{"a": null}]}') == {"data": [{"a": None}]}
    with pytest.raises(BadRequest, match="NaN at line 1 column 2"):
        parse_json(b"[NaN]")


# --- cost linear in the body (issue 13, item 2) ---------------------------------------------


def unique_key_records(count: int) -> list[dict]:
    """Records that each carry one key of their own besides x: the quadratic case."""
    return [{"x": i, f"junk{i}": i} for i in range(count)]


@pytest.mark.parametrize(
    ("records", "known", "columns"),
    [
        # only the model's columns are built; other keys are ignored
        ([{"x": 1, "extra": 2}, {"x": 3}], ("x", "y"), {"x": [1, 3]}),
        # a known key some record lacks is NA there; one no record has stays absent (so
        # coercion still answers "missing column")
        ([{"x": 1}, {"y": 2}], ("x", "y", "z"), {"x": [1, None], "y": [None, 2]}),
        ([{"extra": 1}], ("x",), {}),
        # without a prototype every key is a column
        ([{"x": 1, "extra": 2}], None, {"x": [1], "extra": [2]}),
    ],
    ids=["extra-ignored", "known-absent-stays-absent", "none-known", "unchecked"],
)
def test_records_build_only_the_columns_the_model_knows(records, known, columns) -> None:
    frame = frame_from_records(records, known=known)
    assert frame.columns == columns
    assert frame.nrows == len(records)


def test_unique_keys_per_record_cost_one_column_not_one_per_key() -> None:
    """8,000 records with a key each of their own: one column of 8,000 entries (the model
    knows x), not 8,001 columns of 8,000 entries each."""
    frame = frame_from_document({"dataframe_records": unique_key_records(8000)}, known=("x",))
    assert list(frame.columns) == ["x"]
    assert sum(len(values) for values in frame.columns.values()) == 8000


def test_without_a_prototype_distinct_keys_are_capped_before_any_column_is_built() -> None:
    limit = MAX_UNCHECKED_COLUMNS
    fits = [{f"c{i}": i for i in range(limit)}]
    assert len(frame_from_records(fits).columns) == limit
    with pytest.raises(BadRequest, match=rf"more than {limit} distinct columns \(by record"):
        frame_from_document({"data": unique_key_records(limit)})
    with pytest.raises(BadRequest, match=r"ptype\.rds"):
        parse_body(orjson.dumps({"dataframe_records": unique_key_records(2 * limit)}))
