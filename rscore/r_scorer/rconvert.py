"""Typed columns to R vectors and R results back to JSON-ready Python values.

Vectors are built column-wise with rpy2's low-level interface (one allocation per
column; R's own JSON parsing measured 2.5x slower). A data.frame is a named list with
compact row names, exactly what `data.frame()` would make, without calling R.

Columnar for large frames: a column of `prototype.COLUMNAR_ROWS` values or more (or a numpy
array, as the worker protocol's binary frame carries numbers) is copied into R as one
block of memory (numpy, `from_memoryview`: 0.1 ms for 100,000 doubles where a list
took 25 ms), NA written as R's own NA bits; answers come back the same way, and a
character answer as R's codes into its distinct values (3 ms for 100,000 labels where
one string at a time took 250 ms). Below that size the per-value path is the faster.
An answer the sidecar passes on unparsed is written as JSON text here
(`json_predictions`): a numeric one by orjson straight from its block.

Runs only inside an R worker (or `rscore predict`), after `rmodel.start_r()`.
Never validates: `prototype.coerce` has done that before anything gets here.
"""

from __future__ import annotations

import functools
import math
from array import array
from typing import Any

import numpy as np
import orjson
import rpy2.rinterface as ri
from rpy2.rinterface_lib import openrlib

from rscore.r_scorer import prototype as kinds
from rscore.r_scorer.errors import ModelError
from rscore.r_scorer.name_cache import DEFAULT_NAME_CACHE_BYTES, NameCache
from rscore.r_scorer.protocol import JsonArray
from rscore.r_scorer.prototype import COLUMNAR_ROWS, TypedFrame

_NA_INT = -(2**31)  # NA_integer_ and logical NA, as stored in R's memory
_NA_REAL_BITS = np.uint64(0x7FF00000000007A2)  # NA_real_: a NaN with R's payload 1954


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


def _doubles(values: Any) -> Any:
    """Numbers (None or NaN: NA) as an R double vector, copied as one block."""
    numbers = np.array(values, dtype=np.float64)  # a copy: None -> NaN
    missing = np.isnan(numbers)
    if missing.any():  # JSON has no NaN: every one is a null, R's NA (not R's NaN)
        numbers.view(np.uint64)[missing] = _NA_REAL_BITS
    return ri.FloatSexpVector.from_memoryview(numbers.data)


def _integers(values: Any) -> Any:
    """Whole numbers (None or NaN: NA) as R integers; the caller sets the type."""
    numbers = np.array(values, dtype=np.float64)  # None -> NaN; within R's range already
    codes = np.where(np.isnan(numbers), _NA_INT, numbers).astype(np.int32)
    return ri.IntSexpVector.from_memoryview(codes.data)


def _columnar(values: Any) -> bool:
    return isinstance(values, np.ndarray) or len(values) >= COLUMNAR_ROWS


def r_vector(kind: str, values: Any, levels: tuple[str, ...] = ()) -> Any:
    """One typed column as an R vector of its kind (values: a list, or for numbers a
    numpy array with NaN for NA)."""
    if kind == kinds.NUMERIC:
        if _columnar(values):
            return _doubles(values)
        return ri.FloatSexpVector(_with_na(values, ri.NA_Real))
    if kind == kinds.INTEGER:
        if _columnar(values):
            return _integers(values)
        return ri.IntSexpVector(_with_na(values, ri.NA_Integer))
    if kind == kinds.LOGICAL:
        if _columnar(values):
            return _r_function("as.logical")(_integers(values))
        return ri.BoolSexpVector(_with_na(values, ri.NA_Logical))
    if kind == kinds.CHARACTER:
        return ri.StrSexpVector(_with_na(values, ri.NA_Character))
    if kind in (kinds.DATE, kinds.DATETIME):
        return _r_moments(kind, values)
    if kind in (kinds.FACTOR, kinds.ORDERED):
        if _columnar(values):
            codes = _integers(values)
        else:
            codes = ri.IntSexpVector(_with_na(values, ri.NA_Integer))
        codes.do_slot_assign("levels", _strings(levels))
        classes = ("ordered", "factor") if kind == kinds.ORDERED else ("factor",)
        _set_class(codes, classes)
        return codes
    raise ValueError(f"no R vector for kind {kind!r}")  # coerce() never yields "any"


def _r_moments(kind: str, values: list[Any]) -> Any:
    """Dates (days since 1970-01-01) as an R Date, date-times (seconds) as a POSIXct in
    UTC: doubles with R's class, as as.Date() and as.POSIXct() make them."""
    if _columnar(values):
        moments = _doubles(values)
    else:
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


def _numbers(vector: Any, dtype: Any, accessor: str) -> Any:
    """An R vector's numbers as a numpy array, copied out of R's memory in one block."""
    pointer = getattr(openrlib.rlib, accessor)(vector.__sexp__._cdata)
    size = np.dtype(dtype).itemsize * len(vector)
    return np.frombuffer(openrlib.ffi.buffer(pointer, size), dtype=dtype).copy()


def _with_none(values: list[Any], missing: Any) -> list[Any]:
    for index in np.flatnonzero(missing).tolist():
        values[index] = None
    return values


@functools.cache
def _r_function(name: str) -> Any:
    """A base R function, looked up once (R has started by the time one is needed)."""
    return ri.baseenv[name]


def _block(vector: Any, rtype: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """A double, integer or logical vector as one block copy: (its values, where they
    are missing: NA, NaN, Inf); None for any other type."""
    if rtype == ri.RTYPES.REALSXP:
        numbers = _numbers(vector, np.float64, "REAL")
        return numbers, ~np.isfinite(numbers)
    if rtype in (ri.RTYPES.INTSXP, ri.RTYPES.LGLSXP):
        accessor = "INTEGER" if rtype == ri.RTYPES.INTSXP else "LOGICAL"
        codes = _numbers(vector, np.int32, accessor)
        return (codes if rtype == ri.RTYPES.INTSXP else codes != 0), codes == _NA_INT
    return None


def _columnar_values(vector: Any, rtype: Any) -> list[Any]:
    """python_values for a long vector: one block copy and numpy, no R call per value."""
    block = _block(vector, rtype)
    if block is not None:
        values, missing = block
        return _with_none(values.tolist(), missing)
    # Strings: R's codes into the distinct values (a hash in R), each distinct one
    # converted once.
    distinct = _r_function("unique")(vector)
    labels = np.array(
        [None if value is ri.NA_Character else str(value) for value in distinct], dtype=object
    )
    codes = _numbers(_r_function("match")(vector, distinct), np.int32, "INTEGER")
    return labels[codes - 1].tolist()


def python_values(vector: Any) -> list[Any]:
    """An atomic R vector (no attributes) as JSON-ready values; NA, NaN, Inf -> None."""
    if len(vector) == 0:
        return []
    rtype = vector.typeof
    if len(vector) >= COLUMNAR_ROWS and rtype in _COLUMNAR_TYPES:
        return _columnar_values(vector, rtype)
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


_COLUMNAR_TYPES = (ri.RTYPES.REALSXP, ri.RTYPES.INTSXP, ri.RTYPES.LGLSXP, ri.RTYPES.STRSXP)


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


def json_predictions(answer: Any) -> JsonArray:
    """R's `.score()` answer as the JSON text of its predictions (what `orjson.dumps` of
    `python_predictions(answer)` writes), for an answer passed on unparsed. A long
    numeric vector with no NA is written by orjson straight from the numbers' block (NA,
    NaN and Inf are `null` either way); anything else goes through its Python values."""
    if answer[0][0] == _VECTOR:
        vector = answer[1]
        block = _numeric_block(vector) if len(vector) >= COLUMNAR_ROWS else None
        if block is not None:
            return JsonArray(orjson.dumps(block, option=orjson.OPT_SERIALIZE_NUMPY), len(block))
    predictions = python_predictions(answer)
    return JsonArray(orjson.dumps(predictions), len(predictions))


def _numeric_block(vector: Any) -> np.ndarray | None:
    """A double, integer or logical vector's values as one numpy block orjson writes as
    python_values' would be written; None for a string vector, or an integer or logical
    one with NA (numpy has no NA for those)."""
    rtype = vector.typeof
    block = _block(vector, rtype)
    if block is None:
        return None
    values, missing = block
    if rtype == ri.RTYPES.REALSXP:
        return values  # orjson writes non-finite as null
    return None if missing.any() else values


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
