"""Typed columns to R vectors and R results back to JSON-ready Python values.

Vectors are built column-wise with rpy2's low-level interface (one allocation per
column; R's own JSON parsing measured 2.5x slower). A data.frame is a named list with
compact row names, exactly what `data.frame()` would make, without calling R.

Runs only inside an R worker (or `rscore predict`), after `rmodel.start_r()`.
Never validates: `prototype.coerce` has done that before anything gets here.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

import rpy2.rinterface as ri
from rpy2.rinterface_lib import openrlib

from r_scorer import prototype as kinds
from r_scorer.errors import ModelError
from r_scorer.name_cache import DEFAULT_NAME_CACHE_BYTES, NameCache
from r_scorer.prototype import TypedFrame

_NA_INT = -(2**31)  # NA_integer_ and logical NA, as stored in R's memory


# Bounded in bytes: pass-through column names come from clients (see name_cache).
_names: NameCache[ri.StrSexpVector] = NameCache(DEFAULT_NAME_CACHE_BYTES, ri.StrSexpVector)


def _strings(values: tuple[str, ...]) -> ri.StrSexpVector:
    """An R character vector, built once per distinct tuple (names, levels, classes)."""
    return _names.get(values)


def _set_class(obj: Any, classes: tuple[str, ...]) -> None:
    """Set the class attribute the way `class<-` does, marking the object for S3 dispatch
    (rpy2's do_slot_assign leaves the object bit unset, so `nrow()` or `predict()` would
    not dispatch on it)."""
    with openrlib.rlock:
        openrlib.rlib.Rf_setAttrib(
            obj.__sexp__._cdata, openrlib.rlib.R_ClassSymbol, _strings(classes).__sexp__._cdata
        )


def _with_na(values: list[Any], na: Any) -> list[Any]:
    return [na if value is None else value for value in values] if None in values else values


def r_vector(kind: str, values: list[Any], levels: tuple[str, ...] = ()) -> Any:
    """One typed column as an R vector of its kind."""
    if kind == kinds.NUMERIC:
        return ri.FloatSexpVector(_with_na(values, ri.NA_Real))
    if kind == kinds.INTEGER:
        return ri.IntSexpVector(_with_na(values, ri.NA_Integer))
    if kind == kinds.LOGICAL:
        return ri.BoolSexpVector(_with_na(values, ri.NA_Logical))
    if kind == kinds.CHARACTER:
        return ri.StrSexpVector(_with_na(values, ri.NA_Character))
    if kind in (kinds.DATE, kinds.DATETIME):
        return _r_moments(kind, values)
    if kind in (kinds.FACTOR, kinds.ORDERED):
        codes = ri.IntSexpVector(_with_na(values, ri.NA_Integer))
        codes.do_slot_assign("levels", _strings(levels))
        classes = ("ordered", "factor") if kind == kinds.ORDERED else ("factor",)
        _set_class(codes, classes)
        return codes
    raise ValueError(f"no R vector for kind {kind!r}")  # coerce() never yields "any"


def _r_moments(kind: str, values: list[Any]) -> Any:
    """Dates (days since 1970-01-01) as an R Date, date-times (seconds) as a POSIXct in
    UTC: doubles with R's class, as as.Date() and as.POSIXct() make them."""
    moments = ri.FloatSexpVector(_with_na(values, ri.NA_Real))
    if kind == kinds.DATE:
        _set_class(moments, ("Date",))
    else:
        moments.do_slot_assign("tzone", _strings(("UTC",)))
        _set_class(moments, ("POSIXct", "POSIXt"))
    return moments


def r_data_frame(frame: TypedFrame, levels: dict[str, tuple[str, ...]]) -> ri.ListSexpVector:
    """A TypedFrame as an R data.frame; `levels` gives each factor column's levels."""
    columns = [
        r_vector(column.kind, column.values, levels.get(column.name, ()))
        for column in frame.columns
    ]
    data = ri.ListSexpVector(columns)
    data.do_slot_assign("names", _strings(tuple(column.name for column in frame.columns)))
    _set_class(data, ("data.frame",))
    # Compact row names c(NA, -n), as data.frame() stores them.
    data.do_slot_assign("row.names", ri.IntSexpVector([ri.NA_Integer, -frame.nrows]))
    return data


def _raw_numbers(vector: Any, typecode: str, accessor: str) -> list[Any]:
    """An R vector's numbers, copied straight from its memory. (rpy2 3.5's
    `memoryview()` leaks a reference to None per call and crashes a long-lived worker.)"""
    numbers = array(typecode)
    pointer = getattr(openrlib.rlib, accessor)(vector.__sexp__._cdata)
    numbers.frombytes(openrlib.ffi.buffer(pointer, numbers.itemsize * len(vector)))
    return numbers.tolist()


def python_values(vector: Any) -> list[Any]:
    """An atomic R vector (no attributes) as JSON-ready values; NA, NaN, Inf -> None."""
    if len(vector) == 0:
        return []
    rtype = vector.typeof
    if rtype == ri.RTYPES.REALSXP:
        values = _raw_numbers(vector, "d", "REAL")
        return [value if math.isfinite(value) else None for value in values]
    if rtype == ri.RTYPES.INTSXP:
        values = _raw_numbers(vector, "i", "INTEGER")
        return [None if value == _NA_INT else value for value in values]
    if rtype == ri.RTYPES.LGLSXP:
        values = _raw_numbers(vector, "i", "LOGICAL")
        return [None if value == _NA_INT else bool(value) for value in values]
    if rtype == ri.RTYPES.STRSXP:
        return [None if value is ri.NA_Character else str(value) for value in vector]
    raise ModelError(f"score() returned values of R type {rtype.name}, which JSON cannot carry")


# Status codes of R's `.score()` answer (see R/rscore.R).
_VECTOR, _COLUMNS, _FAILED = 0, 1, 2


def python_predictions(answer: Any) -> list[Any]:
    """R's `.score()` answer as one JSON value per row; raises ModelError for R's error."""
    status = answer[0][0]
    if status == _VECTOR:
        return python_values(answer[1])
    if status == _FAILED:
        # R's message already names what failed: "score() failed: ..." or
        # "predict() for class 'x' failed: ..." (R/rscore.R's .score).
        raise ModelError(str(answer[1][0]))
    names = list(answer[1])
    columns = [python_values(column) for column in answer[2]]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def r_argument(value: Any) -> Any:
    """A predict() argument from rscore.toml as an R vector (TOML numbers are doubles,
    like R's literals)."""
    items = value if isinstance(value, list) else [value]
    if isinstance(items[0], bool):
        return ri.BoolSexpVector(items)
    if isinstance(items[0], int | float):
        return ri.FloatSexpVector([float(item) for item in items])
    return ri.StrSexpVector(items)


def r_named_list(values: dict[str, Any]) -> ri.ListSexpVector:
    """A named R list of already-converted R objects."""
    result = ri.ListSexpVector(list(values.values()))
    result.do_slot_assign("names", ri.StrSexpVector(list(values)))
    return result
