"""A large `dataframe_split` body of numbers read straight into float64 columns.

The general path (`payload.parse_json`, `payload.frame_from_split`, `prototype.coerce`)
builds a Python list per row and an object per value before numpy sees them: ~1 us per
row of four numbers (100,000 rows: ~95 ms), all of it holding the GIL on the sidecar's
parse thread. A body whose `data` holds only numbers and nulls, for a model whose
inputs are all numeric (or integer), is read here in a few passes over its bytes:

1. Find `data`: the longest run of bytes that can only be numbers, nulls, brackets,
   commas and whitespace; it must be half the body at least (else parsing the rest
   costs about what the general path does: a large records body is never parsed
   twice). The body with that run replaced by a marker string is parsed (small now),
   and must be a `dataframe_split` whose `data` is the marker. A run that lay inside a
   JSON string cannot pass: the marker's backslash outside a string is not JSON. A
   body with `\\u0000` anywhere (so a forged marker) is not read here at all.
2. Check the array's shape without building it: its brackets and commas must be
   exactly those of n rows of `len(columns)` values (compared by length first, so the
   memory used stays in proportion to the body).
3. Read the values in pieces of whole rows, in place (the commas around a piece stand
   in for its brackets while it is read), every number strictly as JSON (an empty
   value, or two values with no comma between them, is refused), into one float64
   block, NaN for null: by simdjson straight into doubles, or by orjson where simdjson
   declines a piece (a null, an integer past 64 bits). It must hold n x `len(columns)`
   values. A bytearray body is lent, not kept: its bytes are as they were on return.

Anything this does not cover (another body format, a string or boolean among the
values, a column the model reads as anything but numbers, a limit exceeded, invalid JSON
anywhere, fewer than `COLUMNAR_ROWS` rows) gives None, and the caller takes the general
path: the same answer, and for a bad body the same error message. What this returns is
what the general path makes (an integer column, whose general result is a list of
ints, is here a float64 block that becomes the same R integer vector).

Why it never accepts what the general path refuses: JSON is context-free, so a body
that parses with the marker as `data`'s value also parses with any valid JSON array in
its place, and step 2 and 3 make the run exactly such an array (rows of `len(columns)`
values, each one JSON number or null as orjson itself reads it: a count short or over
is refused). tests/test_columnar_split.py holds it to the general path over generated
bodies, bit for bit.

Pure: no R, no I/O.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson

from rscore.r_scorer.payload import BODY_FORMATS, NUL, RequestLimits
from rscore.r_scorer.prototype import (
    COLUMNAR_ROWS,
    INTEGER,
    NUMERIC,
    R_INT_MAX,
    Prototype,
    TypedColumn,
    TypedFrame,
)

# Below this many bytes the general path costs no more than the passes here.
MIN_BODY_BYTES = 32 * 1024
# Values read by one parse (~0.3 ms by simdjson, ~1 ms by orjson): the GIL, which both
# hold throughout a call, is free for the event loop's thread between two (a
# 100,000-row body in one orjson call held it ~20 ms, and every small request waited).
PIECE_VALUES = 32_768
_WHITESPACE = b" \t\r\n"  # JSON's four
_VALUE_BYTES = b"0123456789+-.eEnul"  # what numbers and null are written with
# bytes.translate table: 1 for a byte an array of numbers may hold, else 0.
_IN_DATA = bytes(int(byte in _VALUE_BYTES + b"[]," + _WHITESPACE) for byte in range(256))
_NOT_SKELETON = _VALUE_BYTES + _WHITESPACE  # deleted, they leave brackets and commas
_MARKER = "\x00rscore:data"
_MARKER_JSON = b'"\\u0000rscore:data"'
_ESCAPED_NUL = b"\\u0000"
_SPLIT_KEY = b'"dataframe_split"'  # as any encoder writes it (escaped: the general path)
_OPEN, _CLOSE = ord("["), ord("]")


@dataclass(frozen=True, slots=True)
class NumericSplit:
    """A body read here: its frame, coerced to the prototype, and the document for data
    collection (`data` as the body's own text, an orjson.Fragment, on one line), or None
    when not asked for (`keep_document`)."""

    frame: TypedFrame
    document: dict[str, Any] | None


def numeric_split(
    body: bytes | bytearray,
    prototype: Prototype,
    limits: RequestLimits,
    *,
    keep_document: bool = True,
) -> NumericSplit | None:
    """The body's frame if it is a large all-number `dataframe_split` for a model of
    numeric inputs; else None (take the general path). The document for data collection
    is built only when `keep_document` (its one-line copy of `data` costs a pass)."""
    if len(body) < MIN_BODY_BYTES or not prototype.checked:
        return None
    if any(column.kind not in (NUMERIC, INTEGER) for column in prototype.columns):
        return None  # not numbers: the general path copes (or says why not)
    if _SPLIT_KEY not in body or _ESCAPED_NUL in body:
        return None
    span = _data_span(body)
    if span is None:
        return None
    start, stop = span
    if 2 * (stop - start) < len(body):
        return None  # parsing the rest would cost about what the general path does
    try:
        document = orjson.loads(body[:start] + _MARKER_JSON + body[stop:])
    except orjson.JSONDecodeError:
        return None
    names = _column_names(document, limits)
    if names is None:
        return None
    positions = {name: position for position, name in enumerate(names)}
    wanted = []
    for column in prototype.columns:
        position = positions.get(column.name)
        if position is None:
            return None  # missing: the general path says so
        wanted.append((column, position))
    nrows = _rows(body, start, stop, len(names))
    if nrows is None or not COLUMNAR_ROWS <= nrows <= limits.max_rows:
        return None
    # Read in place (the brackets around a piece are written over two commas and put
    # back), so a bytes body is copied once; the sidecar's is a bytearray already.
    lent = body if isinstance(body, bytearray) else bytearray(body)
    values = _values(lent, start, stop, nrows, len(names))
    if values is None:
        return None
    columns = []
    for column, position in wanted:
        block = np.ascontiguousarray(values[:, position])
        if column.kind == INTEGER and not _whole_within_r(block):
            return None  # the general path names the row
        columns.append(TypedColumn(column.name, column.kind, block))
    if not keep_document:
        return NumericSplit(TypedFrame(tuple(columns), nrows), None)
    with memoryview(body) as view:
        text = view[start:stop].tobytes()
    document["dataframe_split"]["data"] = orjson.Fragment(_one_line(text))
    return NumericSplit(TypedFrame(tuple(columns), nrows), document)


def _one_line(text: bytes) -> bytes:
    """The array's text without line breaks: data collection writes a document per line
    (JSON Lines), and a pretty-printed body's `data` would otherwise cut its record in
    pieces. Whitespace can go: no value here is a string, and every two are apart by a
    comma or a bracket."""
    if b"\n" in text or b"\r" in text:
        return text.translate(None, _WHITESPACE)
    return text


def _data_span(body: bytes | bytearray) -> tuple[int, int] | None:
    """[start, stop) of the longest run of array-of-numbers bytes, trimmed to begin at
    its `[` and end at its last `]`; None if it does not."""
    inside = np.frombuffer(body.translate(_IN_DATA), dtype=np.bool_)
    bounds = np.concatenate(([0], np.flatnonzero(inside[1:] != inside[:-1]) + 1, [len(body)]))
    first = 0 if inside[0] else 1  # runs alternate: [bounds[i], bounds[i + 1])
    starts, stops = bounds[first:-1:2], bounds[first + 1 :: 2]
    if not len(starts):
        return None
    longest = int(np.argmax(stops - starts))
    start, stop = int(starts[longest]), int(stops[longest])
    while start < stop and body[start] in _WHITESPACE:
        start += 1
    while stop > start and body[stop - 1] in _WHITESPACE + b",":
        stop -= 1
    if stop - start < 2 or body[start] != _OPEN or body[stop - 1] != _CLOSE:
        return None
    return start, stop


def _column_names(document: Any, limits: RequestLimits) -> list[str] | None:
    """The columns of a `dataframe_split` document whose data is the marker, if the
    general path would accept them; else None."""
    if not isinstance(document, dict):
        return None
    if [key for key in BODY_FORMATS if key in document] != ["dataframe_split"]:
        return None
    split = document["dataframe_split"]
    if not isinstance(split, dict) or split.get("data") != _MARKER:
        return None
    names = split.get("columns")
    if not isinstance(names, list) or not names or len(names) > limits.max_columns:
        return None
    if not all(type(name) is str and NUL not in name for name in names):
        return None
    return names if len(set(names)) == len(names) else None


def _rows(body: bytes | bytearray, start: int, stop: int, width: int) -> int | None:
    """How many rows the array at body[start:stop] holds, if its brackets and commas
    are exactly those of rows of `width` values; else None. (An empty value, `[,` `,,`
    `,]` or `[]`, is refused by the read: it leaves two commas, or a comma and a
    bracket, with no value between them.) The lengths are compared first: the skeleton
    expected is built only when it is as long as the one found, never from a count of
    brackets alone (10,000 columns and a body of a million `[` would ask for 10 GB)."""
    # The whole body's skeleton less those of the bytes around the array: no copy of
    # the array's own text.
    skeleton = body.translate(None, _NOT_SKELETON)
    first = len(body[:start].translate(None, _NOT_SKELETON))
    last = len(skeleton) - len(body[stop:].translate(None, _NOT_SKELETON))
    nrows = skeleton.count(b"[", first, last) - 1
    if nrows < 1 or last - first != nrows * (width + 2) + 1:
        return None
    row = b"[" + b"," * (width - 1) + b"],"
    with memoryview(skeleton) as view:
        return nrows if view[first:last] == b"[" + (row * nrows)[:-1] + b"]" else None


def _values(body: bytearray, start: int, stop: int, nrows: int, width: int) -> np.ndarray | None:
    """The values of the array at body[start:stop] (rows checked by `_rows`) as an
    (nrows, width) float64 block, NaN for null; None if a value is not a JSON number or
    null (an empty one leaves `[,` `,,` or `,]`: not JSON either).

    Read in pieces of whole rows, in place: the comma between two rows that ends a piece
    becomes its `]` while it is read, then the `[` that opens the next, then a comma
    again. Every `]` inside the array closes a row (`_rows`), and the next comma after
    it is the one between that row and the next."""
    count = nrows * width
    block = np.empty(count, dtype=np.float64)
    opened, end = start, stop - 1  # body[start] is `[`, body[end] its `]`
    piece_bytes = max(1, (stop - start) * PIECE_VALUES // count)
    filled = 0
    view = memoryview(body)
    try:
        while opened < end:
            closed = body.find(b"]", opened + piece_bytes, end)
            cut = end if closed < 0 else body.find(b",", closed, end)
            cut = end if cut < 0 else cut
            before = body[opened], body[cut]
            body[opened], body[cut] = _OPEN, _CLOSE
            try:
                values = _piece(view[opened : cut + 1])
            finally:
                body[opened], body[cut] = before
            if filled + len(values) > count:
                return None
            block[filled : filled + len(values)] = values
            filled += len(values)
            opened = cut
    except (orjson.JSONDecodeError, OverflowError, TypeError, ValueError):
        return None
    finally:
        view.release()
    return block.reshape(nrows, width) if filled == count else None


_PARSERS = threading.local()  # a simdjson parser per thread, reused: its buffers too


def _piece(text: memoryview) -> np.ndarray:
    """A JSON array of rows of numbers (and nulls) as its values, flat. simdjson reads
    numbers straight into doubles (~4x orjson's Python floats, and no lists); it refuses
    what orjson refuses, and also a null or an integer past 64 bits, which orjson then
    reads (NaN for null, the nearest double for the integer: the general path's values)."""
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = simdjson.Parser()
    try:
        parsed = parser.parse(text)
        if isinstance(parsed, simdjson.Array):  # always, from `[` ... `]`
            return np.frombuffer(parsed.as_buffer(of_type="d"), dtype=np.float64)
    except (ValueError, TypeError, RuntimeError):
        pass
    # orjson is the judge of JSON: its error refuses the body.
    return np.asarray(orjson.loads(text), dtype=np.float64).ravel()


def _whole_within_r(block: np.ndarray) -> bool:
    """Every non-null value a whole number R can hold as an integer (coerce's rule)."""
    present = block[~np.isnan(block)]
    return bool(np.all(np.abs(present) <= R_INT_MAX) and np.all(present == np.trunc(present)))
