"""The OpenAPI 3.0.3 document of one deployment, served at `GET /swagger.json`.

It describes the routes, bodies, errors and auth of ARCHITECTURE.md for the model this
deployment serves: the row schema of `POST /score` comes from the model's input prototype
(column names, types, factor levels), so clients and tools such as Swagger UI or code
generators can check a body before sending it.

Pure: builds a dict from a `ModelInfo`; no aiohttp, no I/O. Column schemas come only from
the prototype the sidecar itself coerces to; the document never contains a credential, a
file path or anything else about the host.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

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
    R_INT_MAX,
    Column,
    Prototype,
)
from rscore.sidecar.v2 import DATATYPE_OF_KIND, DATATYPES, model_metadata

OPENAPI_VERSION = "3.0.3"
V2_SCHEMAS_FILE = "openapi_v2.json"  # the Open Inference Protocol's static schemas
BEARER = "bearerAuth"  # the name of the security scheme

_SCHEMAS = "#/components/schemas/"
_HEADERS = "#/components/headers/"
_PARAMETERS = "#/components/parameters/"
_JSON = "application/json"

_BAD_REQUEST = "not JSON, wrong shape, missing column, bad type, unknown level"
_UNSUPPORTED_MEDIA_TYPE = (
    "a Content-Type is given and it is not JSON (a missing one is read as JSON)"
)
# ARCHITECTURE.md's error table: status, codes, when.
ERROR_STATUSES: tuple[tuple[str, str, str], ...] = (
    ("400", "bad_request, schema_mismatch", _BAD_REQUEST),
    ("401", "unauthorized", "no, wrong or expired credential"),
    ("413", "too_large", "body over the limit"),
    ("415", "unsupported_media_type", _UNSUPPORTED_MEDIA_TYPE),
    ("429", "overloaded", "queue full; retry after Retry-After seconds"),
    ("500", "model_error", "R raised an error in score(); the R message is returned"),
    ("502", "worker_crashed", "the R worker died while scoring this request (it is restarted)"),
    ("503", "unavailable", "not ready, or draining after SIGTERM"),
    ("504", "timeout", "queue wait + scoring exceeded the request timeout"),
)

# Headers some error responses carry: the Bearer challenge, and when to come back.
_ERROR_HEADERS = {
    "401": ("WWW-Authenticate",),
    "429": ("Retry-After",),
    "503": ("Retry-After",),  # draining or loading: the sidecar says when to retry
}

# JSON schema of a column of each kind that needs no levels.
_COLUMN_TYPES: dict[str, dict[str, Any]] = {
    NUMERIC: {"type": "number"},
    # R integers are 32-bit and -2^31 is NA_integer_.
    INTEGER: {"type": "integer", "minimum": -R_INT_MAX, "maximum": R_INT_MAX},
    LOGICAL: {"type": "boolean"},
    CHARACTER: {"type": "string"},
    DATE: {"type": "string", "format": "date"},  # ISO 8601
    DATETIME: {"type": "string", "format": "date-time"},  # ISO 8601; no offset: UTC
    ANY: {},  # no prototype for this column: any JSON value
}


def openapi_document(model: ModelInfo) -> dict[str, Any]:
    """The whole OpenAPI document for the deployment serving `model`."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": _info(model),
        "paths": _paths(model),
        "components": _components(model),
    }


def _info(model: ModelInfo) -> dict[str, Any]:
    prototype = model.prototype
    if prototype.checked:
        inputs = f"Inputs are checked against the model's prototype (from {prototype.source})."
    else:
        inputs = "The model has no input prototype: rows pass to R unchecked."
    return {
        "title": f"rscore: {model.name}",
        "version": model.version or "0",
        "description": f"Scores rows with the R model '{model.name}'. {inputs}",
    }


# --- paths -----------------------------------------------------------------------------


def _paths(model: ModelInfo) -> dict[str, Any]:
    name = "/v2/models/{name}"
    return {
        "/score": {"post": _score_operation(model)},
        f"{name}/infer": {"post": _infer_operation(model)},
        name: {"get": _metadata_operation(model)},
        f"{name}/ready": {"get": _model_ready_operation()},
        "/v2/health/live": {
            "get": _health("v2ServerLive", "v2", "the server is live", refused=_NOT_LIVE)
        },
        "/v2/health/ready": {
            "get": _health("v2ServerReady", "v2", "every worker is loaded", refused=_NOT_READY)
        },
        "/healthz": {"get": _health("healthz", "health", "the process serves", refused=_NOT_LIVE)},
        "/readyz": {
            "get": _health(
                "readyz", "health", "every worker is loaded and not draining", refused=_NOT_READY
            )
        },
        "/swagger.json": {"get": _swagger_operation()},
    }


def _score_operation(model: ModelInfo) -> dict[str, Any]:
    responses = {
        "200": _response(
            "One prediction per row, in input order.", _ref("ScoreResponse"), _score_example()
        ),
        **{status: _error_response(status, codes, when) for status, codes, when in ERROR_STATUSES},
    }
    return {
        "operationId": "score",
        "tags": ["scoring"],
        "summary": "Score rows",
        "description": (
            "The body holds rows in one of three formats (MLflow / Azure ML conventions). "
            "A key absent from a record is NA (null) there. Zero rows (an empty list in any "
            'format) is a valid request and answers {"predictions": []}.'
        ),
        "security": [{BEARER: []}],
        "parameters": [_ref_parameter("RequestId")],
        "requestBody": {
            "required": True,
            "content": {
                _JSON: {"schema": _ref("ScoreRequest"), "examples": _score_examples(model)}
            },
        },
        "responses": responses,
    }


def _infer_operation(model: ModelInfo) -> dict[str, Any]:
    return {
        "operationId": "v2ModelInfer",
        "tags": ["v2"],
        "summary": "Open Inference Protocol (KServe V2) inference",
        "description": (
            "One 1-D input tensor per column (shape [n] or [n, 1]), JSON only: the binary "
            "tensor data extension is not supported. Outputs: one 'predictions' tensor, or "
            "one tensor per column when the model returns a matrix or data.frame."
        ),
        "security": [{BEARER: []}],
        "parameters": [_ref_parameter("ModelName"), _ref_parameter("RequestId")],
        "requestBody": {
            "required": True,
            "content": {_JSON: {"schema": _ref("InferRequest"), "example": _infer_example(model)}},
        },
        "responses": {
            "200": _response("The output tensors.", _ref("InferResponse")),
            **_v2_error_responses(),
        },
    }


def _metadata_operation(model: ModelInfo) -> dict[str, Any]:
    return {
        "operationId": "v2ModelMetadata",
        "tags": ["v2"],
        "summary": "V2 model metadata: the input tensors the model takes",
        "security": [{BEARER: []}],
        "parameters": [_ref_parameter("ModelName"), _ref_parameter("RequestId")],
        "responses": {
            "200": _response("The model's metadata.", _ref("ModelMetadata"), model_metadata(model)),
            **_v2_error_responses(),
        },
    }


def _v2_error_responses() -> dict[str, Any]:
    """Failures of the V2 model routes: as for /score, in the V2 error shape."""
    unauthorized = _response("No, wrong or expired credential.", _ref("V2Error"))
    unauthorized["headers"]["WWW-Authenticate"] = {"$ref": f"{_HEADERS}WWW-Authenticate"}
    return {
        "401": unauthorized,
        "404": _response("No model of that name is served here.", _ref("V2Error")),
        "default": _response(
            "Any other failure, with the status of the /score error table.", _ref("V2Error")
        ),
    }


def _model_ready_operation() -> dict[str, Any]:
    operation = _health(
        "v2ModelReady", "v2", "the model is loaded on every worker", refused=_NOT_READY
    )
    operation["parameters"] = [_ref_parameter("ModelName")]
    operation["responses"]["404"] = _response("No model of that name is served here.")
    return operation


_NOT_READY = "No: still loading, or draining after SIGTERM."
_NOT_LIVE = (
    "No: no R worker has been connected for longer than --no-worker-grace-s (restarts "
    "are not bringing one back); the body says how long."
)


def _health(
    operation_id: str,
    tag: str,
    ready: str,
    *,
    refused: str | None = None,
) -> dict[str, Any]:
    """A health or readiness probe: no credential, the status code is the answer; with
    `refused`, a 503 that it describes."""
    responses = {"200": _response(f"Yes: {ready}.")}
    if refused is not None:
        responses["503"] = _response(refused)
    return {"operationId": operation_id, "tags": [tag], "responses": responses}


def _swagger_operation() -> dict[str, Any]:
    return {
        "operationId": "swagger",
        "tags": ["health"],
        "summary": "This document",
        "responses": {"200": _response("The OpenAPI document.", {"type": "object"})},
    }


def _response(
    description: str, schema: dict[str, Any] | None = None, example: Any = None
) -> dict[str, Any]:
    """A response; every one carries x-request-id (the contract's, echoed or generated)."""
    response: dict[str, Any] = {
        "description": description,
        "headers": {"x-request-id": {"$ref": f"{_HEADERS}RequestId"}},
    }
    if schema is not None:
        media: dict[str, Any] = {"schema": schema}
        if example is not None:
            media["example"] = example
        response["content"] = {_JSON: media}
    return response


def _error_response(status: str, codes: str, when: str) -> dict[str, Any]:
    response = _response(f"{codes}: {when}.", _ref("Error"))
    for header in _ERROR_HEADERS.get(status, ()):
        response["headers"][header] = {"$ref": f"{_HEADERS}{header}"}
    return response


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"{_SCHEMAS}{schema}"}


def _ref_parameter(parameter: str) -> dict[str, str]:
    return {"$ref": f"{_PARAMETERS}{parameter}"}


# --- components ------------------------------------------------------------------------


def _components(model: ModelInfo) -> dict[str, Any]:
    return {
        "schemas": {**_score_schemas(model.prototype), **_v2_schemas()},
        "parameters": _parameters(model),
        "headers": _headers(),
        "securitySchemes": {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key from the keys file, or a JWT.",
            }
        },
    }


def _parameters(model: ModelInfo) -> dict[str, Any]:
    return {
        "ModelName": {
            "name": "name",
            "in": "path",
            "required": True,
            "description": "The model this deployment serves.",
            "schema": {"type": "string", "enum": [model.name]},
        },
        "RequestId": {
            "name": "x-request-id",
            "in": "header",
            "required": False,
            "description": "Echoed in the response; generated when absent.",
            "schema": {"type": "string"},
        },
    }


def _headers() -> dict[str, Any]:
    return {
        "RequestId": {
            "description": "The request's id: the one sent, or a generated one.",
            "schema": {"type": "string"},
        },
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "WWW-Authenticate": {
            "description": "The Bearer challenge.",
            "schema": {"type": "string"},
        },
    }


def _score_schemas(prototype: Prototype) -> dict[str, Any]:
    rows = {"type": "array", "items": _ref("Row")}
    return {
        "Row": _row_schema(prototype),
        "DataframeRecords": _body_format("dataframe_records", rows),
        "DataframeSplit": _body_format("dataframe_split", _split_schema(prototype)),
        "Data": _body_format("data", rows),
        # Exactly one of the three keys: the sidecar refuses a body with two.
        "ScoreRequest": {"oneOf": [_ref("DataframeRecords"), _ref("DataframeSplit"), _ref("Data")]},
        "ScoreResponse": {
            "type": "object",
            "required": ["predictions"],
            "properties": {
                "predictions": {
                    "type": "array",
                    "items": {
                        "description": (
                            "A value (null for NA; a factor's label), or an object keyed by "
                            "column name when the model returns a matrix or data.frame."
                        )
                    },
                }
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
    }


def _row_schema(prototype: Prototype) -> dict[str, Any]:
    """One row as an object keyed by column name; free-form when there is no prototype."""
    if not prototype.checked:
        return {
            "type": "object",
            "additionalProperties": True,
            "description": "Any columns: the model has no input prototype.",
        }
    return {
        "type": "object",
        "properties": {column.name: _column_schema(column) for column in prototype.columns},
        "required": [column.name for column in prototype.columns],
        # Extra columns are ignored by the sidecar, not refused.
        "additionalProperties": True,
    }


def _column_schema(column: Column) -> dict[str, Any]:
    if column.kind in (FACTOR, ORDERED):
        # OpenAPI 3.0.3: `nullable` does not extend `enum`, so null is listed explicitly.
        schema: dict[str, Any] = {"type": "string", "enum": [*column.levels, None]}
        if column.kind == ORDERED:
            schema["description"] = "An ordered factor: levels in order."
    else:
        schema = dict(_COLUMN_TYPES[column.kind])
    schema["nullable"] = True  # null is R's NA
    return schema


def _body_format(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": [key], "properties": {key: value}}


def _split_schema(prototype: Prototype) -> dict[str, Any]:
    columns: dict[str, Any] = {
        "type": "array",
        "items": {"type": "string"},
        "uniqueItems": True,
        "description": (
            "Column names, each once; when 'data' has rows, every column of the model must be "
            "among them."
        ),
    }
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["columns", "data"],
        "properties": {
            "columns": columns,
            "data": {
                "type": "array",
                "description": "Rows, each a list of values in the order of 'columns'.",
                "items": {"type": "array", "items": {}},
            },
        },
    }
    if prototype.checked:
        # "columns contains every prototype column"; OpenAPI 3.0 has no `contains`. Zero
        # rows are valid whatever 'columns' names, as in the other two formats.
        names_every_column = [_names_column(column.name) for column in prototype.columns]
        schema["anyOf"] = [
            {"properties": {"data": {"maxItems": 0}}},
            {"properties": {"columns": {"allOf": names_every_column}}},
        ]
    return schema


def _names_column(name: str) -> dict[str, Any]:
    """Array names `name`: not (every item differs from `name`)."""
    return {"not": {"type": "array", "items": {"not": {"enum": [name]}}}}


@functools.cache
def _v2_static() -> dict[str, Any]:
    """The V2 routes' static schemas, from the data file beside this module."""
    text = resources.files("rscore.sidecar").joinpath(V2_SCHEMAS_FILE).read_text(encoding="utf-8")
    schemas: dict[str, Any] = json.loads(text)
    schemas.pop("$comment", None)
    return schemas


def _v2_schemas() -> dict[str, Any]:
    """The V2 schemas: the data file's, and the datatypes this sidecar answers (one
    source, rscore.sidecar.v2). A fresh copy each time: callers may add to the document."""
    return {
        **copy.deepcopy(_v2_static()),
        "V2Datatype": {"type": "string", "enum": list(DATATYPES)},
    }


# --- examples --------------------------------------------------------------------------

_EXAMPLE_VALUES: dict[str, tuple[Any, Any]] = {
    NUMERIC: (1.5, 2.0),
    INTEGER: (1, 2),
    LOGICAL: (True, False),
    CHARACTER: ("text", "more text"),
    DATE: ("2024-05-31", "2024-06-01"),
    DATETIME: ("2024-05-31T12:30:00Z", "2024-06-01T08:00:00+02:00"),
    ANY: ("a", "b"),
}

# Columns of the examples when the model has no prototype (ARCHITECTURE.md's own).
_FREE_FORM = (Column("x1", NUMERIC), Column("f", CHARACTER))


def _example_columns(model: ModelInfo) -> tuple[Column, ...]:
    return model.prototype.columns or _FREE_FORM


def _example_value(column: Column, row: int) -> Any:
    if column.kind in (FACTOR, ORDERED):
        return column.levels[row % len(column.levels)] if column.levels else None
    return _EXAMPLE_VALUES[column.kind][row]


def _example_rows(model: ModelInfo) -> list[dict[str, Any]]:
    columns = _example_columns(model)
    return [{column.name: _example_value(column, row) for column in columns} for row in (0, 1)]


def _score_examples(model: ModelInfo) -> dict[str, Any]:
    rows = _example_rows(model)
    names = list(rows[0])
    split = {"columns": names, "data": [[row[name] for name in names] for row in rows]}
    return {
        "dataframe_records": {"summary": "Records", "value": {"dataframe_records": rows}},
        "dataframe_split": {"summary": "Columns and rows", "value": {"dataframe_split": split}},
        "data": {"summary": "Records under 'data'", "value": {"data": rows}},
    }


def _score_example() -> dict[str, Any]:
    return {"predictions": [0.5, 0.75]}


def _infer_example(model: ModelInfo) -> dict[str, Any]:
    """One tensor per column, with the datatype the model's metadata announces for it."""
    inputs = [
        {
            "name": column.name,
            "shape": [2],
            "datatype": DATATYPE_OF_KIND[column.kind],
            "data": [_example_value(column, row) for row in (0, 1)],
        }
        for column in _example_columns(model)
    ]
    return {"inputs": inputs}
