"""Request bodies of `POST /score` (and `rscore predict`) turned into column-wise frames.

Three body formats, after MLflow and Azure ML:
`{"dataframe_records": [{...}, ...]}`, `{"dataframe_split": {"columns": [...], "data":
[[...], ...]}}` and `{"data": [{...}, ...]}`. The result is a `Frame`: columns in first-seen
order, each a list of JSON values, all of one length.

A body that is not JSON is a BadRequest naming where; Python's `NaN`, `Infinity` and
`-Infinity` (what `json.dumps` writes for float("nan") and the infinities) get their own
message, since JSON has no such numbers. That diagnosis runs only after the parser has
failed: a valid body costs nothing more than `orjson.loads`.

Pure: no R, no I/O. Never guesses types; that is `prototype.coerce`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from r_scorer.errors import BadRequest

BODY_FORMATS = ("dataframe_records", "dataframe_split", "data")


@dataclass(frozen=True, slots=True)
class Frame:
    """Rows as columns: `columns[name][i]` is row i's value (None where absent)."""

    columns: dict[str, list[Any]]
    nrows: int


NONFINITE_HINT = "JSON has no NaN or Infinity; send null for a missing value"
# A JSON string (skipped whole, an unterminated one to the end) or a non-finite token.
_STRING_OR_NONFINITE = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\Z)|(-?Infinity|NaN)', re.DOTALL)


def parse_body(body: bytes | str) -> Frame:
    """Parse a request body in any of the three formats."""
    return frame_from_document(parse_json(body))


def parse_json(body: bytes | str) -> Any:
    """The body as parsed JSON; BadRequest, naming the position, if it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(not_json_message(exc)) from None


def not_json_message(exc: orjson.JSONDecodeError) -> str:
    """The 400's message for a body the parser refused.

    A `NaN`, `Infinity` or `-Infinity` token at the error position (or, failing that,
    anywhere outside strings) is named with its line and column and the hint to send
    null; any other error keeps the parser's own message.
    """
    found = _nonfinite_at(exc.doc, exc.pos)
    if found is not None:
        return f"body is not valid JSON: {_where(*found, exc.doc)} — {NONFINITE_HINT}"
    found = _first_nonfinite(exc.doc)
    if found is None:
        return f"body is not valid JSON: {exc}"
    return f"body is not valid JSON: {exc}; also {_where(*found, exc.doc)} — {NONFINITE_HINT}"


def _nonfinite_at(doc: str, pos: int) -> tuple[str, int] | None:
    """The non-finite token the parser stopped at (it stops after a `-` sign)."""
    if doc.startswith("NaN", pos):
        return "NaN", pos
    if doc.startswith("Infinity", pos):
        if pos > 0 and doc[pos - 1] == "-":
            return "-Infinity", pos - 1
        return "Infinity", pos
    if doc.startswith("-Infinity", pos):
        return "-Infinity", pos
    return None


def _first_nonfinite(doc: str) -> tuple[str, int] | None:
    """The first `NaN`/`Infinity`/`-Infinity` outside JSON strings, if any."""
    for match in _STRING_OR_NONFINITE.finditer(doc):
        if match.group(1) is not None:
            return match.group(1), match.start(1)
    return None


def _where(token: str, at: int, doc: str) -> str:
    line = doc.count("\n", 0, at) + 1
    column = at - doc.rfind("\n", 0, at)  # 1-based; rfind gives -1 on the first line
    return f"{token} at line {line} column {column}"


def frame_from_document(document: Any) -> Frame:
    """Turn a parsed JSON document (any of the three formats) into a Frame."""
    if not isinstance(document, dict):
        raise BadRequest(f"body must be a JSON object with one of {_formats()}")
    present = [key for key in BODY_FORMATS if key in document]
    if len(present) != 1:
        found = ", ".join(sorted(document)) or "no keys"
        raise BadRequest(f"body must have exactly one of {_formats()}; found {found}")
    key = present[0]
    if key == "dataframe_split":
        return frame_from_split(document[key])
    return frame_from_records(document[key], field=key)


def frame_from_records(records: Any, *, field: str = "dataframe_records") -> Frame:
    """Records: a list of objects. A key absent from some records is NA there."""
    if not isinstance(records, list):
        raise BadRequest(f"'{field}' must be a list of objects (one per row)")
    names: dict[str, None] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(f"'{field}'[{index}] must be an object, got {json_type(record)}")
        names.update(dict.fromkeys(record))
    columns = {name: [record.get(name) for record in records] for name in names}
    return Frame(columns, len(records))


def frame_from_split(split: Any) -> Frame:
    """Split: `{"columns": [...], "data": [[...], ...]}`, every row as long as `columns`."""
    if not isinstance(split, dict):
        raise BadRequest("'dataframe_split' must be an object with 'columns' and 'data'")
    names = split.get("columns")
    rows = split.get("data")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise BadRequest("'dataframe_split.columns' must be a list of column names")
    if len(set(names)) != len(names):
        raise BadRequest("'dataframe_split.columns' names a column twice")
    if not isinstance(rows, list):
        raise BadRequest("'dataframe_split.data' must be a list of rows")
    width = len(names)
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise BadRequest(
                f"'dataframe_split.data'[{index}] must be a list of {width} values, one per column"
            )
    columns = {name: [row[position] for row in rows] for position, name in enumerate(names)}
    return Frame(columns, len(rows))


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _formats() -> str:
    return ", ".join(f"'{key}'" for key in BODY_FORMATS)
