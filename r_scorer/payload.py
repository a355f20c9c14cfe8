"""Request bodies of `POST /score` (and `rscore predict`) turned into column-wise frames.

Three body formats, after MLflow and Azure ML:
`{"dataframe_records": [{...}, ...]}`, `{"dataframe_split": {"columns": [...], "data":
[[...], ...]}}` and `{"data": [{...}, ...]}`. The result is a `Frame`: columns in first-seen
order, each a list of JSON values, all of one length.

A body that is not JSON is a BadRequest naming where; Python's `NaN`, `Infinity` and
`-Infinity` (what `json.dumps` writes for float("nan") and the infinities) get their own
message, since JSON has no such numbers. That diagnosis runs only after the parser has
failed: a valid body costs nothing more than `orjson.loads`.

The cost is linear in the body: given the columns the model knows (its prototype), a
records body builds only those (a key the model does not know is ignored, however many
distinct ones the records carry); without a prototype, more than MAX_UNCHECKED_COLUMNS
distinct keys is a BadRequest before any column is built (one column per key with an
entry per record would grow with keys x records).

Pure: no R, no I/O. Never guesses types; that is `prototype.coerce`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from r_scorer.errors import BadRequest

BODY_FORMATS = ("dataframe_records", "dataframe_split", "data")
MAX_UNCHECKED_COLUMNS = 1024  # distinct keys of a records body for a model with no prototype


@dataclass(frozen=True, slots=True)
class Frame:
    """Rows as columns: `columns[name][i]` is row i's value (None where absent)."""

    columns: dict[str, list[Any]]
    nrows: int


NONFINITE_HINT = "JSON has no NaN or Infinity; send null for a missing value"
# A JSON string (skipped whole, an unterminated one to the end) or a non-finite token.
_STRING_OR_NONFINITE = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\Z)|(-?Infinity|NaN)', re.DOTALL)


def parse_body(body: bytes | str, known: Collection[str] | None = None) -> Frame:
    """Parse a request body in any of the three formats (`known`: frame_from_records)."""
    return frame_from_document(parse_json(body), known)


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


def frame_from_document(document: Any, known: Collection[str] | None = None) -> Frame:
    """Turn a parsed JSON document (any of the three formats) into a Frame; `known`: the
    columns the model knows, if it has a prototype (see frame_from_records)."""
    if not isinstance(document, dict):
        raise BadRequest(f"body must be a JSON object with one of {_formats()}")
    present = [key for key in BODY_FORMATS if key in document]
    if len(present) != 1:
        found = ", ".join(sorted(document)) or "no keys"
        raise BadRequest(f"body must have exactly one of {_formats()}; found {found}")
    key = present[0]
    if key == "dataframe_split":
        return frame_from_split(document[key])
    return frame_from_records(document[key], field=key, known=known)


def frame_from_records(
    records: Any, *, field: str = "dataframe_records", known: Collection[str] | None = None
) -> Frame:
    """Records: a list of objects. A key absent from some records is NA there.

    With `known` (the model's columns), only the known keys that some record has become
    columns; the others are ignored, as a prototype's coercion would. Without it, every
    key does, up to MAX_UNCHECKED_COLUMNS distinct keys.
    """
    if not isinstance(records, list):
        raise BadRequest(f"'{field}' must be a list of objects (one per row)")
    # Prototype.known is built once per model: frozenset() of a frozenset is that object.
    wanted = None if known is None else frozenset(known)
    names: dict[str, None] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(f"'{field}'[{index}] must be an object, got {json_type(record)}")
        if wanted is None:
            names.update(dict.fromkeys(record))
            if len(names) > MAX_UNCHECKED_COLUMNS:
                raise BadRequest(
                    f"'{field}' names more than {MAX_UNCHECKED_COLUMNS} distinct columns "
                    f"(by record {index}); this model has no input prototype to say which "
                    "it needs (add a ptype.rds to the bundle)"
                )
        else:
            names.update(dict.fromkeys(key for key in record if key in wanted))
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
