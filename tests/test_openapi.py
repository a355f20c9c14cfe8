"""The OpenAPI document of a deployment: valid OpenAPI 3.0.3, and true to the contract."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator, validate
from openapi_spec_validator import validate as validate_spec
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from rscore.r_scorer.errors import BadRequest, SchemaMismatch
from rscore.r_scorer.payload import frame_from_document
from rscore.r_scorer.pool import ModelInfo
from rscore.r_scorer.prototype import Column, Prototype, coerce
from rscore.sidecar.openapi import openapi_document
from rscore.sidecar.v2 import frame_from_infer, infer_response, model_metadata, v2_error

CHECKED = ModelInfo(
    "iris",
    "1.2",
    True,
    ("stats",),
    Prototype(
        (
            Column("x", "numeric"),
            Column("n", "integer"),
            Column("b", "logical"),
            Column("s", "character"),
            Column("f", "factor", ("a", "b")),
            Column("o", "ordered", ("lo", "hi")),
            Column("z", "any"),
        ),
        "ptype.rds",
    ),
)
UNCHECKED = ModelInfo("free", "", True, (), Prototype())
MODELS = [CHECKED, UNCHECKED]
MODEL_IDS = ["checked", "unchecked"]

ROUTES = {
    "/score": {"post"},
    "/v2/models/{name}/infer": {"post"},
    "/v2/models/{name}": {"get"},
    "/v2/models/{name}/ready": {"get"},
    "/v2/health/live": {"get"},
    "/v2/health/ready": {"get"},
    "/healthz": {"get"},
    "/readyz": {"get"},
    "/swagger.json": {"get"},
}
AUTHENTICATED = {
    ("/score", "post"),
    ("/v2/models/{name}/infer", "post"),
    ("/v2/models/{name}", "get"),
}
ERROR_STATUSES = ["400", "401", "413", "415", "429", "500", "502", "503", "504"]
ERROR_REF = {"$ref": "#/components/schemas/Error"}


def check(instance: Any, schema_name: str, model: ModelInfo) -> None:
    """Validate against a named component schema, its $refs resolved within the document."""
    components = openapi_document(model)["components"]
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
    validate(instance, schema, cls=OAS30Validator)


def is_valid(instance: Any, schema_name: str, model: ModelInfo) -> bool:
    try:
        check(instance, schema_name, model)
    except ValidationError:
        return False
    return True


def operation(document: dict, path: str, method: str) -> dict:
    return document["paths"][path][method]


# --- the document as a whole ----------------------------------------------------------


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_document_is_valid_openapi_3_0_3(model):
    document = openapi_document(model)
    validate_spec(document)  # raises on any violation of the OpenAPI 3.0 specification
    assert document["openapi"] == "3.0.3"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d["paths"]["/score"]["post"].pop("responses"),
        lambda d: d["components"]["schemas"]["Row"].update(type="row"),
        lambda d: d.pop("info"),
    ],
    ids=["operation-without-responses", "unknown-type", "no-info"],
)
def test_the_validator_does_catch_a_broken_document(damage):
    """The validity test above can fail: a damaged document is refused."""
    document = copy.deepcopy(openapi_document(CHECKED))
    damage(document)
    with pytest.raises(OpenAPIValidationError):
        validate_spec(document)


@pytest.mark.parametrize(
    ("model", "title", "version"),
    [(CHECKED, "rscore: iris", "1.2"), (UNCHECKED, "rscore: free", "0")],
    ids=MODEL_IDS,
)
def test_info_names_the_model_and_its_version(model, title, version):
    info = openapi_document(model)["info"]
    assert (info["title"], info["version"]) == (title, version)


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        (CHECKED, "checked against the model's prototype (from ptype.rds)"),
        (UNCHECKED, "no input prototype: rows pass to R unchecked"),
    ],
    ids=MODEL_IDS,
)
def test_info_says_whether_inputs_are_checked(model, fragment):
    assert fragment in openapi_document(model)["info"]["description"]


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_routes_are_the_contract_ones(model):
    paths = openapi_document(model)["paths"]
    assert {path: set(item) for path, item in paths.items()} == ROUTES


@pytest.mark.parametrize(
    ("path", "method"),
    [(path, method) for path, methods in ROUTES.items() for method in sorted(methods)],
    ids=[f"{method} {path}" for path, methods in ROUTES.items() for method in sorted(methods)],
)
def test_only_scoring_and_model_metadata_need_a_bearer_credential(path, method):
    document = openapi_document(CHECKED)
    assert "security" not in document  # no global requirement: probes stay open
    expected = [{"bearerAuth": []}] if (path, method) in AUTHENTICATED else None
    assert operation(document, path, method).get("security") == expected


def test_bearer_security_scheme():
    schemes = openapi_document(CHECKED)["components"]["securitySchemes"]
    assert schemes == {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from the keys file, or a JWT.",
        }
    }


@pytest.mark.parametrize(
    ("path", "method"),
    [(path, method) for path, methods in ROUTES.items() for method in sorted(methods)],
    ids=[f"{method} {path}" for path, methods in ROUTES.items() for method in sorted(methods)],
)
def test_every_response_carries_x_request_id(path, method):
    responses = operation(openapi_document(CHECKED), path, method)["responses"]
    for status, response in responses.items():
        assert response["headers"]["x-request-id"] == {"$ref": "#/components/headers/RequestId"}, (
            status
        )


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/readyz", "get", {"200", "503"}),
        ("/healthz", "get", {"200", "503"}),
        ("/v2/health/live", "get", {"200", "503"}),
        ("/v2/health/ready", "get", {"200", "503"}),
        ("/v2/models/{name}/ready", "get", {"200", "404", "503"}),
    ],
    ids=["readyz", "healthz", "v2-live", "v2-ready", "v2-model-ready"],
)
def test_probes_answer_with_their_status(path, method, statuses):
    assert set(operation(openapi_document(CHECKED), path, method)["responses"]) == statuses


@pytest.mark.parametrize(
    ("path", "method", "parameters"),
    [
        ("/score", "post", ["RequestId"]),
        ("/v2/models/{name}/infer", "post", ["ModelName", "RequestId"]),
        ("/v2/models/{name}", "get", ["ModelName", "RequestId"]),
        ("/v2/models/{name}/ready", "get", ["ModelName"]),
    ],
    ids=["score", "infer", "metadata", "model-ready"],
)
def test_operation_parameters(path, method, parameters):
    got = operation(openapi_document(CHECKED), path, method)["parameters"]
    assert got == [{"$ref": f"#/components/parameters/{name}"} for name in parameters]


def test_model_name_parameter_is_the_served_model():
    parameter = openapi_document(CHECKED)["components"]["parameters"]["ModelName"]
    assert parameter["in"] == "path"
    assert parameter["required"] is True
    assert parameter["schema"] == {"type": "string", "enum": ["iris"]}


# --- POST /score: errors --------------------------------------------------------------


def test_score_answers_predictions_and_the_contract_errors():
    responses = operation(openapi_document(CHECKED), "/score", "post")["responses"]
    assert list(responses) == ["200", *ERROR_STATUSES]
    ok = responses["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/ScoreResponse"}


@pytest.mark.parametrize(
    ("status", "codes", "headers"),
    [
        ("400", "bad_request, schema_mismatch", []),
        ("401", "unauthorized", ["WWW-Authenticate"]),
        ("413", "too_large", []),
        ("415", "unsupported_media_type", []),
        ("429", "overloaded", ["Retry-After"]),
        ("500", "model_error", []),
        ("502", "worker_crashed", []),
        ("503", "unavailable", ["Retry-After"]),
        ("504", "timeout", []),
    ],
    ids=ERROR_STATUSES,
)
def test_each_score_error_references_the_one_error_schema(status, codes, headers):
    response = operation(openapi_document(CHECKED), "/score", "post")["responses"][status]
    assert response["content"] == {"application/json": {"schema": ERROR_REF}}
    assert response["description"].startswith(f"{codes}: ")
    assert list(response["headers"]) == ["x-request-id", *headers]
    for header in headers:
        assert response["headers"][header] == {"$ref": f"#/components/headers/{header}"}


@pytest.mark.parametrize(
    "body",
    [BadRequest("no rows").to_json(), SchemaMismatch("column 'x'").to_json()],
    ids=["bad-request", "schema-mismatch"],
)
def test_error_schema_describes_the_errors_the_server_sends(body: dict) -> None:
    schema = openapi_document(CHECKED)["components"]["schemas"]["Error"]
    validate(body, schema, cls=OAS30Validator)
    with pytest.raises(ValidationError):  # the V2 shape is not this one
        validate({"error": "no rows"}, schema, cls=OAS30Validator)


@pytest.mark.parametrize(
    "error",
    [BadRequest("not JSON"), SchemaMismatch("missing column 'x'")],
    ids=["bad_request", "schema_mismatch"],
)
def test_the_errors_the_code_raises_fit_the_error_schema(error):
    assert is_valid(error.to_json(), "Error", CHECKED)
    assert not is_valid({"error": error.message}, "Error", CHECKED)


# --- POST /score: the request body ----------------------------------------------------


def test_row_schema_comes_from_the_prototype():
    row = openapi_document(CHECKED)["components"]["schemas"]["Row"]
    assert row == {
        "type": "object",
        "properties": {
            "x": {"type": "number", "nullable": True},
            "n": {
                "type": "integer",
                "minimum": -2147483647,
                "maximum": 2147483647,
                "nullable": True,
            },
            "b": {"type": "boolean", "nullable": True},
            "s": {"type": "string", "nullable": True},
            "f": {"type": "string", "enum": ["a", "b", None], "nullable": True},
            "o": {
                "type": "string",
                "enum": ["lo", "hi", None],
                "description": "An ordered factor: levels in order.",
                "nullable": True,
            },
            "z": {"nullable": True},
        },
        "required": ["x", "n", "b", "s", "f", "o", "z"],
        "additionalProperties": True,
    }


def test_row_schema_of_an_unchecked_model_is_free_form():
    row = openapi_document(UNCHECKED)["components"]["schemas"]["Row"]
    assert row == {
        "type": "object",
        "additionalProperties": True,
        "description": "Any columns: the model has no input prototype.",
    }


def test_score_request_is_one_of_the_three_formats():
    schemas = openapi_document(CHECKED)["components"]["schemas"]
    assert schemas["ScoreRequest"] == {
        "oneOf": [
            {"$ref": "#/components/schemas/DataframeRecords"},
            {"$ref": "#/components/schemas/DataframeSplit"},
            {"$ref": "#/components/schemas/Data"},
        ]
    }
    rows = {"type": "array", "items": {"$ref": "#/components/schemas/Row"}}
    assert schemas["DataframeRecords"] == {
        "type": "object",
        "required": ["dataframe_records"],
        "properties": {"dataframe_records": rows},
    }
    assert schemas["Data"] == {"type": "object", "required": ["data"], "properties": {"data": rows}}
    assert schemas["DataframeSplit"]["required"] == ["dataframe_split"]


ROW = {"x": 1.5, "n": 2, "b": True, "s": "t", "f": "a", "o": "hi", "z": [1, "anything"]}
NULL_ROW = dict.fromkeys(ROW)
NAMES = list(ROW)


def split(rows: list[dict], names: list[str] = NAMES) -> dict:
    return {
        "dataframe_split": {"columns": names, "data": [[r.get(n) for n in names] for r in rows]}
    }


def without(row: dict, name: str) -> dict:
    return {key: value for key, value in row.items() if key != name}


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"dataframe_records": [ROW, NULL_ROW]}, True),
        (split([ROW, NULL_ROW]), True),
        ({"data": [ROW, NULL_ROW]}, True),
        ({"dataframe_records": []}, True),
        ({"dataframe_records": [{**ROW, "extra": "ignored"}]}, True),
        (split([ROW], list(reversed(NAMES))), True),
        (split([{**ROW, "extra": 1}], [*NAMES, "extra"]), True),
        ({"dataframe_records": [ROW], "note": "other keys are ignored"}, True),
        ({"dataframe_records": [ROW, without(ROW, "x")]}, False),
        ({"data": [without(ROW, "f")]}, False),
        (split([ROW], NAMES[:-1]), False),
        (split([ROW], [*NAMES[1:], "y"]), False),
        (split([], []), True),
        ({"data": []}, True),
        (split([], ["other"]), True),
        ({"dataframe_records": [{**ROW, "x": "1.5"}]}, False),
        ({"dataframe_records": [{**ROW, "n": 2.5}]}, False),
        ({"dataframe_records": [{**ROW, "n": 2**31}]}, False),
        ({"dataframe_records": [{**ROW, "b": "yes"}]}, False),
        ({"dataframe_records": [{**ROW, "s": 1}]}, False),
        ({"dataframe_records": [{**ROW, "f": "c"}]}, False),
        ({"data": [{**ROW, "o": "mid"}]}, False),
        (split([ROW], [*NAMES, "x"]), False),
        ({"dataframe_records": [ROW], "data": [ROW]}, False),
        ({"dataframe_records": ROW}, False),
        ({"rows": [ROW]}, False),
        ([ROW], False),
    ],
    ids=[
        "records",
        "split",
        "data",
        "no-rows",
        "extra-column",
        "split-any-column-order",
        "split-extra-column",
        "extra-body-key",
        "records-missing-column",
        "data-missing-column",
        "split-missing-column",
        "split-missing-first-column",
        "split-no-columns-no-rows",
        "data-no-rows",
        "split-other-columns-no-rows",
        "numeric-as-string",
        "integer-with-fraction",
        "integer-beyond-r",
        "logical-as-string",
        "character-as-number",
        "unknown-level",
        "unknown-ordered-level",
        "split-column-twice",
        "two-formats",
        "records-not-a-list",
        "no-format",
        "not-an-object",
    ],
)
def test_request_bodies_against_the_schema_of_a_checked_model(body, valid):
    assert is_valid(body, "ScoreRequest", CHECKED) is valid


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"dataframe_records": [{"anything": 1}, {}]}, True),
        ({"dataframe_split": {"columns": ["a"], "data": [[1], [None]]}}, True),
        ({"data": [{"q": "r"}]}, True),
        ({"dataframe_split": {"columns": ["a"]}}, False),
        ({"dataframe_records": [1]}, False),
        ({"data": [{}], "dataframe_records": [{}]}, False),
        ({}, False),
    ],
    ids=[
        "records",
        "split",
        "data",
        "split-no-data",
        "record-not-an-object",
        "two-formats",
        "empty",
    ],
)
def test_request_bodies_against_the_schema_of_an_unchecked_model(body, valid):
    assert is_valid(body, "ScoreRequest", UNCHECKED) is valid


def test_a_missing_column_is_reported_by_name():
    with pytest.raises(ValidationError) as raised:
        check({"dataframe_records": [without(ROW, "s")]}, "DataframeRecords", CHECKED)
    assert "'s' is a required property" in raised.value.message


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
@pytest.mark.parametrize("body_format", ["dataframe_records", "dataframe_split", "data"])
def test_published_examples_fit_the_schema_and_the_sidecar(model, body_format):
    body = operation(openapi_document(model), "/score", "post")["requestBody"]
    assert body["required"] is True
    example = body["content"]["application/json"]["examples"][body_format]["value"]
    assert list(example) == [body_format]
    check(example, "ScoreRequest", model)
    typed = coerce(frame_from_document(example), model.prototype)
    assert typed.nrows == 2


# --- the V2 routes --------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_published_infer_example_fits_the_schema_and_the_sidecar(model):
    infer = operation(openapi_document(model), "/v2/models/{name}/infer", "post")
    example = infer["requestBody"]["content"]["application/json"]["example"]
    check(example, "InferRequest", model)
    frame, _ = frame_from_infer(example)
    assert coerce(frame, model.prototype).nrows == 2


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_metadata_example_is_the_model_metadata(model):
    metadata = operation(openapi_document(model), "/v2/models/{name}", "get")
    ok = metadata["responses"]["200"]["content"]["application/json"]
    assert ok == {
        "schema": {"$ref": "#/components/schemas/ModelMetadata"},
        "example": model_metadata(model),
    }
    check(model_metadata(model), "ModelMetadata", model)


@pytest.mark.parametrize(
    ("predictions", "request_id"),
    [([0.5, None], "r-1"), ([{"fit": 1.0, "cls": "a"}], None), ([], None)],
    ids=["vector", "data-frame", "no-rows"],
)
def test_infer_responses_fit_the_schema(predictions, request_id):
    check(infer_response(CHECKED, request_id, predictions), "InferResponse", CHECKED)


@pytest.mark.parametrize(
    ("instance", "valid"),
    [
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, True),
        ({"inputs": []}, False),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1.0]}]}, False),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64"}]}, False),
        (
            {"id": 1, "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]},
            False,
        ),
    ],
    ids=["one-tensor", "no-inputs", "unknown-datatype", "no-data", "numeric-id"],
)
def test_infer_request_schema(instance, valid):
    assert is_valid(instance, "InferRequest", CHECKED) is valid


V2_ERROR_REF = {"$ref": "#/components/schemas/V2Error"}


@pytest.mark.parametrize(
    ("path", "method"),
    [("/v2/models/{name}/infer", "post"), ("/v2/models/{name}", "get")],
    ids=["infer", "metadata"],
)
def test_v2_failures_are_in_the_v2_error_shape(path, method):
    responses = operation(openapi_document(CHECKED), path, method)["responses"]
    assert list(responses) == ["200", "401", "404", "default"]
    for status in ("401", "404", "default"):
        assert responses[status]["content"] == {"application/json": {"schema": V2_ERROR_REF}}
    assert responses["401"]["headers"]["WWW-Authenticate"] == {
        "$ref": "#/components/headers/WWW-Authenticate"
    }


@pytest.mark.parametrize(
    ("instance", "valid"),
    [
        (v2_error("input 'x': shape [2,2] is not a column"), True),
        (BadRequest("not JSON").to_json(), False),
        ({"error": 1}, False),
        ({"message": "no error key"}, False),
    ],
    ids=["v2-shape", "rscore-shape", "error-not-a-string", "no-error-key"],
)
def test_v2_error_schema(instance, valid):
    assert is_valid(instance, "V2Error", CHECKED) is valid
