"""The input prototype of a model and the coercion of request columns to it.

A prototype is what the model was trained on: column names, R types and factor levels,
read from `ptype.rds` or from the model's terms (see `R/rscore.R`) and carried as plain
data, so the sidecar can validate a request before it ever reaches R. Coercion turns
JSON values into typed column values ready to become R vectors column-wise: numbers to
float, integers to int, factor labels to 1-based codes, null to None (R's NA). A numeric
column of `COLUMNAR_ROWS` values or more becomes one numpy float64 array (NaN for null:
JSON has no NaN of its own), checked by the types present rather than value by value;
any value not a number sends it down the per-value path, for the error naming its row.

Strings become R strings here, and an R string ends at a NUL character (U+0000): a
string with one is refused, naming the column and row, instead of reaching the model cut
short. The check costs string columns only, and an unknown factor label nothing.

A frame of zero rows (`{"data": []}`, an empty `dataframe_split`, zero-length V2 tensors)
coerces to the prototype's columns, empty, in every format alike: it is never a
missing-column error.

Pure: no R, no I/O. Every error names the column (and the value or row) at fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

from rscore.r_scorer.errors import SchemaMismatch, quoted
from rscore.r_scorer.payload import NUL, Frame, json_type

# Kinds of column: the R vector each becomes.
NUMERIC = "numeric"
INTEGER = "integer"
LOGICAL = "logical"
CHARACTER = "character"
FACTOR = "factor"
ORDERED = "ordered"
DATE = "date"  # an ISO 8601 date string -> R Date (days since 1970-01-01)
DATETIME = "datetime"  # an ISO 8601 date-time string -> R POSIXct (seconds, UTC)
ANY = "any"  # no prototype for this column: the JSON values decide
KINDS = (NUMERIC, INTEGER, LOGICAL, CHARACTER, FACTOR, ORDERED, DATE, DATETIME, ANY)

R_INT_MAX = 2**31 - 1  # R integers are 32-bit and -2^31 is NA_integer_
# A numeric column this long is coerced as one numpy array (and travels to the worker as
# one block of bytes), and rconvert moves columns and answers this long to and from R as
# blocks; below it the per-value loop is faster than numpy's fixed cost.
COLUMNAR_ROWS = 64
_NUMBER_TYPES = frozenset({float, int, type(None)})
_MAX_LEVELS_SHOWN = 10


@dataclass(frozen=True, slots=True)
class Column:
    """One input column: its name, its kind and, for factors, the training levels."""

    name: str
    kind: str
    levels: tuple[str, ...] = ()
    level_codes: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: unknown kind {self.kind!r}")
        if self.levels and not self.level_codes:
            codes = {level: code for code, level in enumerate(self.levels, start=1)}
            object.__setattr__(self, "level_codes", codes)

    def to_json(self) -> dict[str, Any]:
        described: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind in (FACTOR, ORDERED):
            described["levels"] = list(self.levels)
        return described


@dataclass(frozen=True, slots=True)
class Prototype:
    """The model's inputs. `columns` empty means inputs pass through unchecked."""

    columns: tuple[Column, ...] = ()
    source: str = "none"  # "ptype.rds", "terms", or "none"
    # The input columns' names, once per model (None when unchecked): what a records
    # body builds columns for (payload.frame_from_records' `known`).
    known: frozenset[str] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.columns:
            object.__setattr__(self, "known", frozenset(column.name for column in self.columns))

    @property
    def checked(self) -> bool:
        return bool(self.columns)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "columns": [column.to_json() for column in self.columns]}

    @classmethod
    def from_json(cls, described: dict[str, Any]) -> Prototype:
        columns = tuple(
            Column(item["name"], item["kind"], tuple(item.get("levels", ())))
            for item in described.get("columns", ())
        )
        return cls(columns, described.get("source", "none"))


@dataclass(frozen=True, slots=True)
class TypedColumn:
    """A coerced column: values are float/int/bool/str/None, or 1-based codes for factors;
    a long numeric column is a numpy float64 array, NaN for NA."""

    name: str
    kind: str
    values: list[Any] | np.ndarray


@dataclass(frozen=True, slots=True)
class TypedFrame:
    """A request's rows, coerced: the columns the model needs, in prototype order."""

    columns: tuple[TypedColumn, ...]
    nrows: int


def coerce(frame: Frame, prototype: Prototype) -> TypedFrame:
    """Coerce a frame to the prototype; pass columns through when there is none.

    Zero rows are a valid request in every body format: there is no value to check, and
    a records body with no rows cannot name columns, so the result is the prototype's
    columns, each empty, whatever columns the body named (it scores to no predictions).
    """
    if frame.nrows == 0 and prototype.checked:
        return TypedFrame(
            tuple(TypedColumn(column.name, column.kind, []) for column in prototype.columns), 0
        )
    if not prototype.checked:
        typed = tuple(
            TypedColumn(name, *_infer(name, values)) for name, values in frame.columns.items()
        )
        return TypedFrame(typed, frame.nrows)
    missing = [column.name for column in prototype.columns if column.name not in frame.columns]
    if missing:
        raise SchemaMismatch(
            f"missing column{'s' if len(missing) > 1 else ''} {_quoted(missing)}; "
            f"the model needs {_quoted(column.name for column in prototype.columns)}"
        )
    typed = tuple(
        _coerce_column(column, frame.columns[column.name]) for column in prototype.columns
    )
    return TypedFrame(typed, frame.nrows)


def _coerce_column(column: Column, values: list[Any]) -> TypedColumn:
    kind = column.kind
    if kind == ANY:
        return TypedColumn(column.name, *_infer(column.name, values))
    if kind == NUMERIC and len(values) >= COLUMNAR_ROWS:
        numbers = _numeric_block(values)
        if numbers is not None:
            return TypedColumn(column.name, kind, numbers)
    convert = _CONVERTERS[kind]
    out: list[Any] = []
    append = out.append
    for row, value in enumerate(values):
        if value is None:
            append(None)
            continue
        converted = convert(value, column)
        if converted is _REJECT:
            raise _type_error(column, row, value)
        append(converted)
    return TypedColumn(column.name, kind, out)


_REJECT = object()


def _numeric_block(values: list[Any]) -> np.ndarray | None:
    """A column of numbers and nulls as float64 (null: NaN), or None if it holds anything
    else (the per-value path then names the row). `bool` is its own type here, so
    true/false are refused as before, never read as 1/0."""
    if not set(map(type, values)) <= _NUMBER_TYPES:
        return None
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:  # an integer beyond any double: the per-value path says so
        return None


def _to_numeric(value: Any, _: Column) -> Any:
    if type(value) is float or (type(value) is int):
        return float(value)
    return _REJECT


def _to_integer(value: Any, _: Column) -> Any:
    if type(value) is int:
        integer = value
    elif type(value) is float and value.is_integer():
        integer = int(value)
    else:
        return _REJECT
    return integer if -R_INT_MAX <= integer <= R_INT_MAX else _REJECT


def _to_logical(value: Any, _: Column) -> Any:
    return value if type(value) is bool else _REJECT


def _to_character(value: Any, _: Column) -> Any:
    return value if type(value) is str and NUL not in value else _REJECT


def _to_factor_code(value: Any, column: Column) -> Any:
    if type(value) is str:
        label = value
    elif type(value) is int or (type(value) is float and value.is_integer()):
        label = str(int(value))  # R's factor() of a whole number labels it "4", not "4.0"
    else:
        return _REJECT
    code = column.level_codes.get(label)
    if code is None:
        if NUL in label:  # not a level R could hold either: say why
            return _REJECT
        shown = list(column.levels[:_MAX_LEVELS_SHOWN])
        more = len(column.levels) - len(shown)
        suffix = f" and {more} more" if more > 0 else ""
        raise SchemaMismatch(
            f"column '{column.name}': unknown level {quoted(label)}; "
            f"the model knows {_quoted(shown)}{suffix}"
        )
    return code


_EPOCH = date(1970, 1, 1)


def _to_date(value: Any, _: Column) -> Any:
    """An ISO 8601 date ("2024-05-31") as R holds a Date: days since 1970-01-01."""
    if type(value) is not str:
        return _REJECT
    try:
        return float((date.fromisoformat(value) - _EPOCH).days)
    except ValueError:
        return _REJECT


def _to_datetime(value: Any, _: Column) -> Any:
    """An ISO 8601 date and time ("2024-05-31T12:30:00+02:00") as R holds a POSIXct:
    seconds since the epoch. Without an offset it is UTC (the server's zone must not
    change a prediction)."""
    if type(value) is not str:
        return _REJECT
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return _REJECT
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


_CONVERTERS = {
    NUMERIC: _to_numeric,
    INTEGER: _to_integer,
    LOGICAL: _to_logical,
    CHARACTER: _to_character,
    FACTOR: _to_factor_code,
    ORDERED: _to_factor_code,
    DATE: _to_date,
    DATETIME: _to_datetime,
}

_EXPECTED = {
    NUMERIC: "a number",
    INTEGER: f"a whole number within +/-{R_INT_MAX}",
    LOGICAL: "true or false",
    CHARACTER: "a string",
    FACTOR: "a factor level (a string, or a whole number)",
    ORDERED: "a factor level (a string, or a whole number)",
    DATE: "an ISO 8601 date string, YYYY-MM-DD",
    DATETIME: "an ISO 8601 date-time string, YYYY-MM-DDTHH:MM:SS with an optional offset "
    "(none: UTC)",
}


def _type_error(column: Column, row: int, value: Any) -> SchemaMismatch:
    if isinstance(value, str) and NUL in value:
        return _nul_error(column.name, row)
    shown = f" {quoted(value)}" if isinstance(value, str | int | float) else ""
    return SchemaMismatch(
        f"column '{column.name}' must be {_EXPECTED[column.kind]} (or null); "
        f"row {row} has {json_type(value)}{shown}"
    )


def _infer(name: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """Kind and values of a column with no prototype, from its JSON values."""
    seen = {json_type(value) for value in values if value is not None}
    if len(seen) > 1:
        raise SchemaMismatch(f"column {quoted(name)} mixes {_quoted(sorted(seen))} values")
    kind_of_json = {"number": NUMERIC, "boolean": LOGICAL, "string": CHARACTER}
    seen_type = seen.pop() if seen else "boolean"  # all null: R's NA is logical
    if seen_type not in kind_of_json:
        raise SchemaMismatch(f"column {quoted(name)} holds {seen_type} values; expected scalars")
    kind = kind_of_json[seen_type]
    if kind == NUMERIC:
        return kind, [None if value is None else float(value) for value in values]
    if kind == CHARACTER:
        for row, value in enumerate(values):
            if value is not None and NUL in value:
                raise _nul_error(name, row)
    return kind, list(values)


def _nul_error(name: str, row: int) -> SchemaMismatch:
    return SchemaMismatch(
        f"column {quoted(name)}: row {row} has a string with a NUL character (U+0000); R strings "
        "cannot hold one (R would cut the string there)"
    )


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)
