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

Limits (`RequestLimits`, the sidecar's `--max-rows` and `--max-columns`) are checked as
soon as a count is known, before the columns are built: over one is a TooLarge (413)
naming the limit and its flag. A column name with a NUL character (U+0000) is a
BadRequest naming it, the NUL escaped: R strings end at a NUL, so `"ab\u0000cd"` would
reach the model as `"ab"` (string values are checked where they are coerced).

Pure: no R, no I/O. Never guesses types; that is `prototype.coerce`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from rscore.r_scorer.errors import BadRequest, TooLarge, listed, quoted

BODY_FORMATS = ("dataframe_records", "dataframe_split", "data")
MAX_UNCHECKED_COLUMNS = 1024  # distinct keys of a records body for a model with no prototype
# A worker converts ~20 us per column (measured, 1 row): 10,000 columns cost 0.2 s and
# 700,000 ran it into its watchdog. 1,000,000 rows of 3 numbers were answered in 2 s end
# to end, inside the default 5 s request timeout; a 10 MiB body holds at most ~2.6 M
# one-value rows.
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_COLUMNS = 10_000
NUL = "\x00"


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Rows and columns one request may carry (`--max-rows`, `--max-columns`)."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_columns: int = DEFAULT_MAX_COLUMNS

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_columns < 1:
            raise ValueError("max_rows and max_columns must be >= 1")

    def check_rows(self, nrows: int, where: str) -> None:
        """TooLarge if `nrows` is over the limit; `where` names the part of the body."""
        if nrows > self.max_rows:
            raise TooLarge(
                f"{where} has {nrows:,} rows; a request may have at most {self.max_rows:,} "
                "(--max-rows)"
            )

    def check_columns(self, ncolumns: int, where: str) -> None:
        if ncolumns > self.max_columns:
            raise TooLarge(
                f"{where} has {ncolumns:,} columns; a request may have at most "
                f"{self.max_columns:,} (--max-columns)"
            )


NO_LIMITS = RequestLimits(max_rows=2**63, max_columns=2**63)  # `rscore predict` of a file


@dataclass(frozen=True, slots=True)
class Frame:
    """Rows as columns: `columns[name][i]` is row i's value (None where absent).

    Every body format builds one, so the check that a name can become an R name lives
    here: a name with a NUL is a BadRequest (cheap: names only, never values).
    """

    columns: dict[str, list[Any]]
    nrows: int

    def __post_init__(self) -> None:
        for name in self.columns:
            if NUL in name:
                raise BadRequest(
                    f"column name {quoted(name)} has a NUL character (U+0000); R names "
                    "cannot hold one (R would cut the name there)"
                )


NONFINITE_HINT = "JSON has no NaN or Infinity; send null for a missing value"
# A JSON string (skipped whole, an unterminated one to the end) or a non-finite token.
_STRING_OR_NONFINITE = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\Z)|(-?Infinity|NaN)', re.DOTALL)


def parse_body(
    body: bytes | bytearray | str,
    known: Collection[str] | None = None,
    limits: RequestLimits = NO_LIMITS,
) -> Frame:
    """Parse a request body in any of the three formats (`known`: frame_from_records)."""
    return frame_from_document(parse_json(body), known, limits)


def parse_json(body: bytes | bytearray | str) -> Any:
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


def frame_from_document(
    document: Any, known: Collection[str] | None = None, limits: RequestLimits = NO_LIMITS
) -> Frame:
    """Turn a parsed JSON document (any of the three formats) into a Frame; `known`: the
    columns the model knows, if it has a prototype (see frame_from_records)."""
    if not isinstance(document, dict):
        raise BadRequest(f"body must be a JSON object with one of {_formats()}")
    present = [key for key in BODY_FORMATS if key in document]
    if len(present) != 1:
        found = listed(sorted(document)) or "no keys"
        raise BadRequest(f"body must have exactly one of {_formats()}; found {found}")
    key = present[0]
    if key == "dataframe_split":
        return frame_from_split(document[key], limits)
    return frame_from_records(document[key], field=key, known=known, limits=limits)


def frame_from_records(
    records: Any,
    *,
    field: str = "dataframe_records",
    known: Collection[str] | None = None,
    limits: RequestLimits = NO_LIMITS,
) -> Frame:
    """Records: a list of objects. A key absent from some records is NA there.

    With `known` (the model's columns), only the known keys that some record has become
    columns; the others are ignored, as a prototype's coercion would. Without it, every
    key does, up to MAX_UNCHECKED_COLUMNS distinct keys (or `limits.max_columns`).
    """
    if not isinstance(records, list):
        raise BadRequest(f"'{field}' must be a list of objects (one per row)")
    limits.check_rows(len(records), f"'{field}'")
    # Prototype.known is built once per model: frozenset() of a frozenset is that object.
    wanted = None if known is None else frozenset(known)
    names: dict[str, None] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(f"'{field}'[{index}] must be an object, got {json_type(record)}")
        if wanted is None:
            names.update(dict.fromkeys(record))
            if len(names) > limits.max_columns:  # before the unchecked bound: the flag's
                limits.check_columns(len(names), f"'{field}' (by record {index})")
            if len(names) > MAX_UNCHECKED_COLUMNS:
                raise BadRequest(
                    f"'{field}' names more than {MAX_UNCHECKED_COLUMNS} distinct columns "
                    f"(by record {index}); this model has no input prototype to say which "
                    "it needs (add a ptype.rds to the bundle)"
                )
        else:
            names.update(dict.fromkeys(key for key in record if key in wanted))
    limits.check_columns(len(names), f"'{field}'")  # a prototype's columns: the model's
    columns = {name: [record.get(name) for record in records] for name in names}
    return Frame(columns, len(records))


def frame_from_split(split: Any, limits: RequestLimits = NO_LIMITS) -> Frame:
    """Split: `{"columns": [...], "data": [[...], ...]}`, every row as long as `columns`."""
    if not isinstance(split, dict):
        raise BadRequest("'dataframe_split' must be an object with 'columns' and 'data'")
    names = split.get("columns")
    rows = split.get("data")
    if isinstance(names, list):
        limits.check_columns(len(names), "'dataframe_split.columns'")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise BadRequest("'dataframe_split.columns' must be a list of column names")
    if len(set(names)) != len(names):
        raise BadRequest("'dataframe_split.columns' names a column twice")
    if not isinstance(rows, list):
        raise BadRequest("'dataframe_split.data' must be a list of rows")
    limits.check_rows(len(rows), "'dataframe_split.data'")
    width = len(names)
    # One pass in a generator (3x faster than a loop with enumerate); the row at fault
    # is looked for only when there is one.
    if not all(type(row) is list and len(row) == width for row in rows):
        for index, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != width:
                raise BadRequest(
                    f"'dataframe_split.data'[{index}] must be a list of {width} values, "
                    "one per column"
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
