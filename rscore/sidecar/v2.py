"""The Open Inference Protocol (KServe V2) JSON REST format, translated to and from rscore's.

An infer request carries one 1-D input tensor per column (`[n]` or `[n, 1]`); it becomes the
same column-wise `Frame` that `POST /score` bodies become, so everything after it (prototype
coercion, admission, R) is shared. Predictions leave as output tensors: one `predictions`
tensor for a vector, one tensor per column for a data.frame or matrix.

Pure: no aiohttp, no I/O, no clock. Never coerces values to the model's prototype (that is
`prototype.coerce`'s job) and never accepts the binary tensor data extension: a request that
asks for it is refused with a message that says how to send JSON instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from rscore.r_scorer.errors import BadRequest, ModelError, quoted
from rscore.r_scorer.payload import NO_LIMITS, Frame, RequestLimits, json_type
from rscore.r_scorer.pool import ModelInfo
from rscore.r_scorer.prototype import (
    ANY,
    CHARACTER,
    DATE,
    DATETIME,
    FACTOR,
    INTEGER,
    LOGICAL,
    NUMERIC,
    ORDERED,
    Column,
)

# The tensor datatypes of the V2 protocol, in the specification's order.
DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)

PREDICTIONS = "predictions"  # the output tensor of a model whose predictions are a vector

BINARY_UNSUPPORTED = (
    "the binary tensor data extension is not supported; send tensor data as JSON "
    "(tritonclient: set_data_from_numpy(..., binary_data=False))"
)

# Input datatype of each prototype column kind, for model metadata.
DATATYPE_OF_KIND: dict[str, str] = {
    NUMERIC: "FP64",
    INTEGER: "INT32",  # R integers are 32-bit
    LOGICAL: "BOOL",
    CHARACTER: "BYTES",
    FACTOR: "BYTES",  # factors travel as their labels
    ORDERED: "BYTES",
    DATE: "BYTES",  # ISO 8601 strings
    DATETIME: "BYTES",
    ANY: "BYTES",
}

_MAX_SHOWN_CHARS = 40  # long strings are cut in error messages


# --- requests --------------------------------------------------------------------------


def frame_from_infer(document: Any, limits: RequestLimits = NO_LIMITS) -> tuple[Frame, str | None]:
    """An infer request body (parsed JSON) as a Frame, one column per input tensor, and its id.

    Raises BadRequest naming the input tensor (and element) at fault, TooLarge over
    `limits` (inputs are columns; a shape's first size is rows), before any is read.
    """
    if not isinstance(document, dict):
        raise BadRequest(
            f"infer request must be a JSON object with 'inputs', got {json_type(document)}"
        )
    request_id = _request_id(document)
    _check_outputs(document)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("infer request must have 'inputs': a non-empty array of input tensors")
    limits.check_columns(len(inputs), "'inputs'")
    columns: dict[str, list[Any]] = {}
    for index, tensor in enumerate(inputs):
        name, values = _read_input(index, tensor, columns, limits)
        columns[name] = values
    return Frame(columns, _common_rows(columns)), request_id


def _common_rows(columns: dict[str, list[Any]]) -> int:
    first, *others = columns
    nrows = len(columns[first])
    for name in others:
        if len(columns[name]) != nrows:
            raise BadRequest(
                f"input {quoted(name)} has {len(columns[name])} rows but input {quoted(first)} "
                f"has {nrows}; "
                "every input tensor is one column of the same rows"
            )
    return nrows


def _request_id(document: dict[str, Any]) -> str | None:
    if "id" not in document:
        return None
    request_id = document["id"]
    if not isinstance(request_id, str):
        raise BadRequest(f"infer request 'id' must be a string, got {json_type(request_id)}")
    return request_id


def _check_outputs(document: dict[str, Any]) -> None:
    """Check the shape of `outputs`. Requests for binary outputs (tritonclient asks for
    them by default) are answered in JSON, which its clients read just as well."""
    _parameters(document, "infer request")
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list):
        raise BadRequest(f"infer request 'outputs' must be an array, got {json_type(outputs)}")
    # Requested output names are otherwise ignored: every output is always returned.
    for index, output in enumerate(outputs):
        if not isinstance(output, dict):
            raise BadRequest(f"outputs[{index}] must be an object, got {json_type(output)}")
        _parameters(output, f"outputs[{index}]")


def _parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest(f"{where}: 'parameters' must be an object, got {json_type(parameters)}")
    return parameters


def _read_input(
    index: int, tensor: Any, seen: dict[str, list[Any]], limits: RequestLimits
) -> tuple[str, list[Any]]:
    """One input tensor: its name and its elements as column values."""
    if not isinstance(tensor, dict):
        raise BadRequest(f"inputs[{index}] must be an object, got {json_type(tensor)}")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"inputs[{index}] must have a 'name': a non-empty string")
    if name in seen:
        raise BadRequest(f"input {quoted(name)} is given twice; each input tensor is one column")
    where = f"input {quoted(name)}"
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise BadRequest(
            f"{where}: unknown datatype {_shown(datatype)}; expected one of {', '.join(DATATYPES)}"
        )
    parameters = _parameters(tensor, where)
    if "binary_data_size" in parameters or parameters.get("binary_data") is True:
        raise BadRequest(f"{where}: its data is binary: {BINARY_UNSUPPORTED}")
    nrows = _rows_of_shape(where, tensor.get("shape"))
    limits.check_rows(nrows, where)
    elements = _elements(where, tensor, nrows)
    return name, _column_values(where, datatype, elements)


def _rows_of_shape(where: str, shape: Any) -> int:
    """n of a shape `[n]` or `[n, 1]`: a column is a 1-D tensor."""
    valid = (
        isinstance(shape, list)
        and len(shape) in (1, 2)
        and all(type(size) is int and size >= 0 for size in shape)
        and (len(shape) == 1 or shape[1] == 1)
    )
    if not valid:
        raise BadRequest(
            f"{where}: shape {_json_text(shape)} is not a column; expected [n] or [n, 1] "
            "(one 1-D input tensor per column)"
        )
    return int(shape[0])


def _elements(where: str, tensor: dict[str, Any], nrows: int) -> list[Any]:
    data = tensor.get("data")
    if not isinstance(data, list):
        raise BadRequest(f"{where}: 'data' must be an array, got {json_type(data)}")
    elements = _flatten(data)
    if len(elements) != nrows:
        raise BadRequest(
            f"{where}: shape {_json_text(tensor['shape'])} holds {nrows} "
            f"element{'' if nrows == 1 else 's'} but 'data' has {len(elements)}"
        )
    return elements


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major elements of flat or nested data; iterative, so deep nesting cannot recurse."""
    flat: list[Any] = []
    pending: list[Iterator[Any]] = [iter(data)]
    while pending:
        for item in pending[-1]:
            if isinstance(item, list):
                pending.append(iter(item))
                break
            flat.append(item)
        else:
            pending.pop()
    return flat


# --- elements --------------------------------------------------------------------------

_REJECT = object()


@dataclass(frozen=True, slots=True)
class _ElementRule:
    """What a datatype admits: `convert` gives the column value, or _REJECT."""

    convert: Callable[[Any], Any]
    expected: str


def _float_element(value: Any) -> Any:
    # bool is an int in Python but `true` is no number in JSON.
    return float(value) if type(value) in (int, float) else _REJECT


def _integer_rule(low: int, high: int) -> _ElementRule:
    def convert(value: Any) -> Any:
        if type(value) is float and value.is_integer():
            value = int(value)  # 3.0 from a JSON encoder that writes every number as float
        if type(value) is int and low <= value <= high:
            return value
        return _REJECT

    return _ElementRule(convert, f"a whole number in [{low}, {high}]")


def _bool_element(value: Any) -> Any:
    return value if type(value) is bool else _REJECT


def _string_element(value: Any) -> Any:
    return value if type(value) is str else _REJECT


def _integer_rules() -> dict[str, _ElementRule]:
    rules = {}
    for bits in (8, 16, 32, 64):
        rules[f"INT{bits}"] = _integer_rule(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        rules[f"UINT{bits}"] = _integer_rule(0, 2**bits - 1)
    return rules


_ELEMENT_RULES: dict[str, _ElementRule] = {
    "BOOL": _ElementRule(_bool_element, "true or false"),
    **_integer_rules(),
    **{fp: _ElementRule(_float_element, "a number") for fp in ("FP16", "FP32", "FP64")},
    "BYTES": _ElementRule(_string_element, "a string"),
}


def _column_values(where: str, datatype: str, elements: list[Any]) -> list[Any]:
    rule = _ELEMENT_RULES[datatype]
    values: list[Any] = []
    for index, element in enumerate(elements):
        if element is None:
            values.append(None)  # null is R's NA
            continue
        value = rule.convert(element)
        if value is _REJECT:
            raise BadRequest(
                f"{where} is {datatype}: element {index} is {_shown(element)}; "
                f"expected {rule.expected} (or null)"
            )
        values.append(value)
    return values


def _shown(value: Any) -> str:
    """A value for an error message: its JSON type and, for scalars, its JSON text."""
    if isinstance(value, dict | list) or value is None:
        return json_type(value)
    return f"{json_type(value)} {_json_text(value)}"


def _json_text(value: Any) -> str:
    """A value as JSON, cut short: error messages must not echo a whole body."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits
        text = repr(value)
    if len(text) > _MAX_SHOWN_CHARS:
        text = text[: _MAX_SHOWN_CHARS - 3] + "..."
    return text


# --- responses -------------------------------------------------------------------------


def infer_response(
    model: ModelInfo, request_id: str | None, predictions: list[Any]
) -> dict[str, Any]:
    """The V2 infer response for one request's predictions (one per row, in row order).

    Raises ModelError when the predictions cannot be tensors (rows with different keys,
    nested values, mixed types): that is what `score()` returned, not what the client sent.
    """
    response: dict[str, Any] = {"model_name": model.name}
    if model.version:
        response["model_version"] = model.version
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = [
        _output_tensor(name, values) for name, values in _output_columns(predictions).items()
    ]
    return response


def _output_columns(predictions: list[Any]) -> dict[str, list[Any]]:
    """Predictions as named columns: one per key of object rows, else `predictions`."""
    if not predictions or not isinstance(predictions[0], dict):
        return {PREDICTIONS: predictions}
    keys = list(predictions[0])
    for row, prediction in enumerate(predictions):
        if not isinstance(prediction, dict) or set(prediction) != set(keys):
            raise ModelError(
                f"score() returned row {row} as {_shown(prediction)}; expected an object with the "
                f"keys of row 0 ({', '.join(keys)}); every row must have the same columns"
            )
    return {key: [prediction[key] for prediction in predictions] for key in keys}


def _output_tensor(name: str, values: list[Any]) -> dict[str, Any]:
    datatype = _output_datatype(name, values)
    if datatype == "FP64":
        values = [None if value is None else float(value) for value in values]
    return {"name": name, "shape": [len(values)], "datatype": datatype, "data": values}


def _output_datatype(name: str, values: list[Any]) -> str:
    """The datatype that holds every non-null value; all-null (and no rows) is FP64."""
    seen = {type(value) for value in values if value is not None}
    if not seen or (seen <= {int, float} and float in seen):
        return "FP64"
    if seen == {int}:
        return "INT64"
    if seen == {bool}:
        return "BOOL"
    if seen == {str}:
        return "BYTES"
    kinds = sorted({json_type(value) for value in values if value is not None})
    raise ModelError(
        f"output '{name}' holds {', '.join(kinds)} values; a V2 output tensor holds one "
        "scalar type (numbers, true/false or strings) and null"
    )


# --- metadata and errors ---------------------------------------------------------------


def model_metadata(model: ModelInfo) -> dict[str, Any]:
    """V2 model metadata: the prototype's columns as 1-D input tensors of any length."""
    return {
        "name": model.name,
        "versions": [model.version] if model.version else [],
        "platform": "R",
        "inputs": [_input_metadata(column) for column in model.prototype.columns],
        "outputs": [],  # known only once R has scored: a vector or a data.frame's columns
    }


def _input_metadata(column: Column) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": column.name,
        "datatype": DATATYPE_OF_KIND[column.kind],
        "shape": [-1],
    }
    if column.kind in (FACTOR, ORDERED):
        described["parameters"] = {"levels": list(column.levels)}
    return described


def v2_error(message: str) -> dict[str, str]:
    """The V2 specification's error body."""
    return {"error": message}
