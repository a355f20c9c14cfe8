"""Open Inference Protocol (KServe V2) JSON: infer requests to frames, predictions to tensors."""

from __future__ import annotations

import re
from typing import Any

import pytest

from rscore.r_scorer.errors import BadRequest, ModelError
from rscore.r_scorer.payload import Frame
from rscore.r_scorer.pool import ModelInfo
from rscore.r_scorer.prototype import Column, Prototype, coerce
from rscore.sidecar.v2 import (
    BINARY_UNSUPPORTED,
    frame_from_infer,
    infer_response,
    model_metadata,
    v2_error,
)

PROTOTYPE = Prototype(
    (
        Column("x", "numeric"),
        Column("n", "integer"),
        Column("b", "logical"),
        Column("s", "character"),
        Column("f", "factor", ("a", "b")),
        Column("o", "ordered", ("lo", "mid", "hi")),
        Column("z", "any"),
    ),
    "ptype.rds",
)
MODEL = ModelInfo("iris", "1.2", True, ("stats",), PROTOTYPE)
UNVERSIONED = ModelInfo("free", "", True, (), Prototype())


def tensor(name: str, datatype: str, data: Any, shape: Any = None, **extra: Any) -> dict:
    """An input tensor; shape defaults to [len(data)]."""
    described = {
        "name": name,
        "shape": [len(data)] if shape is None else shape,
        "datatype": datatype,
        "data": data,
    }
    return {**described, **extra}


def infer(*tensors: dict, **extra: Any) -> dict:
    return {"inputs": list(tensors), **extra}


# --- requests: what is accepted -------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "columns", "nrows"),
    [
        (infer(tensor("x", "FP64", [1.5, 2.5])), {"x": [1.5, 2.5]}, 2),
        (infer(tensor("x", "FP64", [1, 2.5])), {"x": [1.0, 2.5]}, 2),
        (infer(tensor("x", "FP32", [0.25])), {"x": [0.25]}, 1),
        (infer(tensor("x", "FP16", [3])), {"x": [3.0]}, 1),
        (infer(tensor("x", "FP64", [[1.5], [2.5]], [2, 1])), {"x": [1.5, 2.5]}, 2),
        (infer(tensor("x", "FP64", [1.5, 2.5], [2, 1])), {"x": [1.5, 2.5]}, 2),
        (infer(tensor("x", "FP64", [[1.5, 2.5]], [2])), {"x": [1.5, 2.5]}, 2),
        (infer(tensor("x", "FP64", [[[1.5]], [[2.5]]], [2, 1])), {"x": [1.5, 2.5]}, 2),
        (infer(tensor("x", "INT8", [-128, 127])), {"x": [-128, 127]}, 2),
        (infer(tensor("x", "UINT8", [0, 255])), {"x": [0, 255]}, 2),
        (infer(tensor("x", "INT16", [-(2**15), 2**15 - 1])), {"x": [-(2**15), 2**15 - 1]}, 2),
        (infer(tensor("x", "UINT16", [0, 2**16 - 1])), {"x": [0, 2**16 - 1]}, 2),
        (infer(tensor("x", "INT32", [-(2**31), 2**31 - 1])), {"x": [-(2**31), 2**31 - 1]}, 2),
        (infer(tensor("x", "UINT32", [0, 2**32 - 1])), {"x": [0, 2**32 - 1]}, 2),
        (infer(tensor("x", "INT64", [-(2**63), 2**63 - 1])), {"x": [-(2**63), 2**63 - 1]}, 2),
        (infer(tensor("x", "UINT64", [0, 2**64 - 1])), {"x": [0, 2**64 - 1]}, 2),
        (infer(tensor("x", "INT32", [3.0, -2.0])), {"x": [3, -2]}, 2),
        (infer(tensor("x", "BOOL", [True, False])), {"x": [True, False]}, 2),
        (infer(tensor("x", "BYTES", ["a", ""])), {"x": ["a", ""]}, 2),
        (
            infer(*(tensor(t, t, [None]) for t in ("FP64", "INT32", "BOOL", "BYTES"))),
            {"FP64": [None], "INT32": [None], "BOOL": [None], "BYTES": [None]},
            1,
        ),
        (infer(tensor("x", "FP64", [], [0])), {"x": []}, 0),
        (infer(tensor("x", "FP64", [], [0, 1])), {"x": []}, 0),
        (
            infer(tensor("b", "BYTES", ["u", "v"]), tensor("a", "INT64", [1, None])),
            {"b": ["u", "v"], "a": [1, None]},
            2,
        ),
    ],
    ids=[
        "fp64",
        "fp64-int-becomes-float",
        "fp32",
        "fp16",
        "n-by-1-nested",
        "n-by-1-flat",
        "n-nested",
        "deeper-nesting",
        "int8-bounds",
        "uint8-bounds",
        "int16-bounds",
        "uint16-bounds",
        "int32-bounds",
        "uint32-bounds",
        "int64-bounds",
        "uint64-bounds",
        "int-whole-floats",
        "bool",
        "bytes",
        "nulls-in-every-family",
        "zero-rows",
        "zero-rows-n-by-1",
        "columns-in-input-order",
    ],
)
def test_inputs_become_columns(document, columns, nrows):
    frame, request_id = frame_from_infer(document)
    assert frame == Frame(columns, nrows)
    assert list(frame.columns) == list(columns)
    # Equality says 1 == 1.0 == True: the value types matter to coercion, so check them too.
    assert {name: [type(v) for v in vs] for name, vs in frame.columns.items()} == {
        name: [type(v) for v in vs] for name, vs in columns.items()
    }
    assert request_id is None


@pytest.mark.parametrize(
    ("extra", "request_id"),
    [
        ({"id": "req-42"}, "req-42"),
        ({"id": ""}, ""),
        ({"outputs": [{"name": "no-such-output"}]}, None),
        ({"outputs": [{"name": "predictions", "parameters": {"binary_data": False}}]}, None),
        ({"outputs": []}, None),
        ({"parameters": {"binary_data_output": False, "priority": 1}}, None),
        ({"parameters": {}}, None),
        # Binary outputs asked for (tritonclient's default) are answered in JSON.
        ({"parameters": {"binary_data_output": True}}, None),
        ({"outputs": [{"name": "predictions", "parameters": {"binary_data": True}}]}, None),
    ],
    ids=[
        "id",
        "empty-id",
        "unknown-output-ignored",
        "binary-data-false",
        "no-outputs",
        "binary-data-output-false",
        "empty-parameters",
        "binary-data-output-true",
        "output-binary-data-true",
    ],
)
def test_request_fields_around_the_inputs(extra, request_id):
    frame, got_id = frame_from_infer(infer(tensor("x", "FP64", [1.0]), **extra))
    assert frame == Frame({"x": [1.0]}, 1)
    assert got_id == request_id


def test_input_parameters_other_than_binary_are_accepted():
    document = infer(tensor("s", "BYTES", ["a"], parameters={"content_type": "str"}))
    assert frame_from_infer(document) == (Frame({"s": ["a"]}, 1), None)


def test_deeply_nested_data_does_not_recurse():
    data: Any = [1.0]
    for _ in range(5000):
        data = [data]
    frame, _ = frame_from_infer(infer(tensor("x", "FP64", data, [1])))
    assert frame == Frame({"x": [1.0]}, 1)


def test_metadata_inputs_make_a_request_the_prototype_accepts():
    """A client that follows the metadata gets through coercion: the two agree."""
    data = {
        "x": [1.5, None],
        "n": [1, 2],
        "b": [True, None],
        "s": ["t", "u"],
        "f": ["b", "a"],
        "o": ["hi", None],
        "z": ["v", "w"],
    }
    inputs = [
        {
            "name": item["name"],
            "datatype": item["datatype"],
            "shape": [2],
            "data": data[item["name"]],
        }
        for item in model_metadata(MODEL)["inputs"]
    ]
    frame, _ = frame_from_infer({"inputs": inputs})
    typed = coerce(frame, PROTOTYPE)
    assert [(column.name, column.kind, column.values) for column in typed.columns] == [
        ("x", "numeric", [1.5, None]),
        ("n", "integer", [1, 2]),
        ("b", "logical", [True, None]),
        ("s", "character", ["t", "u"]),
        ("f", "factor", [2, 1]),
        ("o", "ordered", [3, None]),
        ("z", "character", ["v", "w"]),
    ]


# --- requests: what is refused --------------------------------------------------------

X = tensor("x", "FP64", [1.0])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([X], "infer request must be a JSON object with 'inputs', got array"),
        ("x", "infer request must be a JSON object with 'inputs', got string"),
        ({}, "infer request must have 'inputs': a non-empty array of input tensors"),
        ({"inputs": []}, "infer request must have 'inputs': a non-empty array of input tensors"),
        ({"inputs": X}, "infer request must have 'inputs': a non-empty array of input tensors"),
        ({"inputs": [X, 3]}, "inputs[1] must be an object, got number"),
        (
            {"inputs": [{"datatype": "FP64", "shape": [0], "data": []}]},
            "inputs[0] must have a 'name'",
        ),
        (infer(tensor("", "FP64", [1.0])), "inputs[0] must have a 'name': a non-empty string"),
        (infer(tensor(7, "FP64", [1.0])), "inputs[0] must have a 'name': a non-empty string"),
        (infer(X, tensor("x", "INT32", [1])), "input 'x' is given twice"),
        (
            infer(tensor("x", "FLOAT", [1.0])),
            "input 'x': unknown datatype string \"FLOAT\"; expected one of BOOL, UINT8, UINT16",
        ),
        (infer(tensor("x", "fp64", [1.0])), "input 'x': unknown datatype string \"fp64\""),
        (infer(tensor("x", None, [1.0])), "input 'x': unknown datatype null"),
        (
            infer(tensor("x", "FP64", [1.0] * 4, [2, 2])),
            "input 'x': shape [2,2] is not a column; expected [n] or [n, 1]",
        ),
        (infer(tensor("x", "FP64", [1.0], [1, 1, 1])), "input 'x': shape [1,1,1] is not a column"),
        (infer(tensor("x", "FP64", [1.0], [])), "input 'x': shape [] is not a column"),
        (infer(tensor("x", "FP64", [1.0], [-1])), "input 'x': shape [-1] is not a column"),
        (infer(tensor("x", "FP64", [1.0], [1.0])), "input 'x': shape [1.0] is not a column"),
        (infer(tensor("x", "FP64", [1.0], [True])), "input 'x': shape [true] is not a column"),
        (infer(tensor("x", "FP64", [1.0], 1)), "input 'x': shape 1 is not a column"),
        (
            infer({"name": "x", "datatype": "FP64", "data": [1.0]}),
            "input 'x': shape null is not a column",
        ),
        (infer(tensor("x", "FP64", "1.0", [1])), "input 'x': 'data' must be an array, got string"),
        (
            infer({"name": "x", "datatype": "FP64", "shape": [1]}),
            "input 'x': 'data' must be an array, got null",
        ),
        (
            infer(tensor("x", "FP64", [1.0, 2.0], [3])),
            "input 'x': shape [3] holds 3 elements but 'data' has 2",
        ),
        (
            infer(tensor("x", "FP64", [[1.0], [2.0], [3.0]], [2, 1])),
            "input 'x': shape [2,1] holds 2 elements but 'data' has 3",
        ),
        (
            infer(tensor("x", "FP64", [[]], [1])),
            "input 'x': shape [1] holds 1 element but 'data' has 0",
        ),
        (
            infer(tensor("x", "FP64", [1.0, "a"])),
            "input 'x' is FP64: element 1 is string \"a\"; expected a number (or null)",
        ),
        (
            infer(tensor("x", "FP32", [True])),
            "input 'x' is FP32: element 0 is boolean true; expected a number",
        ),
        (
            infer(tensor("x", "FP64", [{"v": 1}])),
            "input 'x' is FP64: element 0 is object; expected a number",
        ),
        (
            infer(tensor("x", "INT8", [1, 128])),
            "input 'x' is INT8: element 1 is number 128; "
            "expected a whole number in [-128, 127] (or null)",
        ),
        (infer(tensor("x", "INT8", [-129])), "input 'x' is INT8: element 0 is number -129"),
        (
            infer(tensor("x", "UINT8", [-1])),
            "input 'x' is UINT8: element 0 is number -1; expected a whole number in [0, 255]",
        ),
        (
            infer(tensor("x", "INT32", [2.5])),
            "input 'x' is INT32: element 0 is number 2.5; "
            "expected a whole number in [-2147483648, 2147483647]",
        ),
        (
            infer(tensor("x", "INT32", [2**31])),
            "input 'x' is INT32: element 0 is number 2147483648",
        ),
        (
            infer(tensor("x", "UINT32", [2**32])),
            "input 'x' is UINT32: element 0 is number 4294967296",
        ),
        (infer(tensor("x", "INT64", [True])), "input 'x' is INT64: element 0 is boolean true"),
        (
            infer(tensor("x", "INT64", [2**63])),
            "input 'x' is INT64: element 0 is number 9223372036854775808",
        ),
        (
            infer(tensor("x", "UINT64", [2**64])),
            "input 'x' is UINT64: element 0 is number 18446744073709551616",
        ),
        (infer(tensor("x", "INT16", ["1"])), "input 'x' is INT16: element 0 is string \"1\""),
        (
            infer(tensor("x", "BOOL", [1])),
            "input 'x' is BOOL: element 0 is number 1; expected true or false (or null)",
        ),
        (infer(tensor("x", "BOOL", ["true"])), "input 'x' is BOOL: element 0 is string \"true\""),
        (
            infer(tensor("x", "BYTES", ["a", 1])),
            "input 'x' is BYTES: element 1 is number 1; expected a string (or null)",
        ),
        (
            infer(tensor("x", "BOOL", ["a" * 100])),
            "input 'x' is BOOL: element 0 is string \"" + "a" * 36 + "...; expected true or false",
        ),
        (
            infer(tensor("x", "FP64", [[1.0], ["b"]], [2, 1])),
            "input 'x' is FP64: element 1 is string \"b\"",
        ),
        (
            infer(tensor("a", "FP64", [1.0, 2.0, 3.0]), tensor("b", "FP64", [1.0, 2.0])),
            "input 'b' has 2 rows but input 'a' has 3; "
            "every input tensor is one column of the same rows",
        ),
        (infer(X, tensor("c", "BOOL", [], [0])), "input 'c' has 0 rows but input 'x' has 1"),
        (infer(X, id=7), "infer request 'id' must be a string, got number"),
        (infer(X, id=None), "infer request 'id' must be a string, got null"),
        (infer(X, parameters=[]), "infer request: 'parameters' must be an object, got array"),
        (
            infer(tensor("x", "FP64", [1.0], parameters="p")),
            "input 'x': 'parameters' must be an object, got string",
        ),
        (
            infer(X, outputs={"name": "predictions"}),
            "infer request 'outputs' must be an array, got object",
        ),
        (infer(X, outputs=["predictions"]), "outputs[0] must be an object, got string"),
        (
            infer(X, outputs=[{"name": "p", "parameters": 1}]),
            "outputs[0]: 'parameters' must be an object, got number",
        ),
    ],
    ids=[
        "not-an-object",
        "a-string",
        "no-inputs",
        "empty-inputs",
        "inputs-not-a-list",
        "input-not-an-object",
        "no-name",
        "empty-name",
        "name-not-a-string",
        "duplicate-name",
        "unknown-datatype",
        "lowercase-datatype",
        "no-datatype",
        "shape-2d",
        "shape-3d",
        "shape-empty",
        "shape-negative",
        "shape-float",
        "shape-bool",
        "shape-not-a-list",
        "no-shape",
        "data-not-a-list",
        "no-data",
        "too-few-elements",
        "too-many-nested-elements",
        "empty-nested-data",
        "fp-string",
        "fp-bool",
        "fp-object",
        "int8-over",
        "int8-under",
        "uint8-negative",
        "int32-fraction",
        "int32-over",
        "uint32-over",
        "int64-bool",
        "int64-over",
        "uint64-over",
        "int-string",
        "bool-number",
        "bool-string",
        "bytes-number",
        "long-value-cut",
        "nested-element-index",
        "inconsistent-rows",
        "inconsistent-rows-zero",
        "id-not-a-string",
        "id-null",
        "request-parameters-not-an-object",
        "input-parameters-not-an-object",
        "outputs-not-a-list",
        "output-not-an-object",
        "output-parameters-not-an-object",
    ],
)
def test_malformed_requests_name_the_tensor_and_the_problem(document, message):
    with pytest.raises(BadRequest, match=re.escape(message)) as raised:
        frame_from_infer(document)
    assert raised.value.code == "bad_request"


@pytest.mark.parametrize(
    ("document", "where"),
    [
        (
            infer(tensor("x", "FP64", [], [1], parameters={"binary_data_size": 8})),
            "input 'x': its data is binary: ",
        ),
        (
            infer(tensor("x", "FP64", [1.0], parameters={"binary_data": True})),
            "input 'x': its data is binary: ",
        ),
    ],
    ids=[
        "input-binary-data-size",
        "input-binary-data",
    ],
)
def test_binary_extension_is_refused_clearly(document, where):
    with pytest.raises(BadRequest) as raised:
        frame_from_infer(document)
    assert raised.value.message == where + BINARY_UNSUPPORTED
    assert "binary_data=False" in raised.value.message  # tells a tritonclient user what to do


# --- responses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predictions", "outputs"),
    [
        ([0.5, None, 1.0], [("predictions", "FP64", [0.5, None, 1.0])]),
        ([1, 2, None], [("predictions", "INT64", [1, 2, None])]),
        ([1, 2.5], [("predictions", "FP64", [1.0, 2.5])]),
        ([True, None, False], [("predictions", "BOOL", [True, None, False])]),
        (["setosa", None], [("predictions", "BYTES", ["setosa", None])]),
        ([None, None], [("predictions", "FP64", [None, None])]),
        ([], [("predictions", "FP64", [])]),
        (
            [{"fit": 1.5, "cls": "a", "ok": True}, {"fit": None, "cls": "b", "ok": False}],
            [
                ("fit", "FP64", [1.5, None]),
                ("cls", "BYTES", ["a", "b"]),
                ("ok", "BOOL", [True, False]),
            ],
        ),
        (
            [{"b": 1, "a": 2.5}, {"a": 4, "b": 3}],
            [("b", "INT64", [1, 3]), ("a", "FP64", [2.5, 4.0])],
        ),
        ([{"p": None}], [("p", "FP64", [None])]),
    ],
    ids=[
        "floats",
        "ints",
        "ints-and-floats",
        "bools",
        "factor-labels",
        "all-null",
        "zero-rows",
        "data-frame-rows",
        "key-order-of-first-row",
        "all-null-column",
    ],
)
def test_predictions_become_output_tensors(predictions, outputs):
    response = infer_response(MODEL, None, predictions)
    expected = [
        {"name": name, "shape": [len(data)], "datatype": datatype, "data": data}
        for name, datatype, data in outputs
    ]
    assert response["outputs"] == expected
    got_types = [[type(v) for v in tensor["data"]] for tensor in response["outputs"]]
    assert got_types == [[type(v) for v in data] for _, _, data in outputs]


@pytest.mark.parametrize(
    ("model", "request_id", "expected"),
    [
        (MODEL, "req-1", {"model_name": "iris", "model_version": "1.2", "id": "req-1"}),
        (MODEL, None, {"model_name": "iris", "model_version": "1.2"}),
        (UNVERSIONED, "req-2", {"model_name": "free", "id": "req-2"}),
        (UNVERSIONED, None, {"model_name": "free"}),
    ],
    ids=["id", "no-id", "no-version", "neither"],
)
def test_response_envelope(model, request_id, expected):
    response = infer_response(model, request_id, [1.0])
    outputs = [{"name": "predictions", "shape": [1], "datatype": "FP64", "data": [1.0]}]
    assert response == {**expected, "outputs": outputs}
    assert list(response) == [*expected, "outputs"]


@pytest.mark.parametrize(
    ("predictions", "message"),
    [
        (
            [{"a": 1}, {"b": 2}],
            "score() returned row 1 as object; expected an object with the keys of row 0 (a)",
        ),
        (
            [{"a": 1}, {"a": 2, "b": 3}],
            "returned row 1 as object; expected an object with the keys of row 0 (a); every row",
        ),
        (
            [{"a": 1}, 2],
            "score() returned row 1 as number 2; expected an object with the keys of row 0 (a)",
        ),
        ([1.0, "a"], "output 'predictions' holds number, string values"),
        ([True, 1], "output 'predictions' holds boolean, number values"),
        ([[1, 2]], "output 'predictions' holds array values"),
        ([1.0, {"a": 1}], "output 'predictions' holds number, object values"),
        ([{"a": [1]}], "output 'a' holds array values"),
    ],
    ids=[
        "different-keys",
        "extra-key",
        "object-then-scalar",
        "number-and-string",
        "bool-and-int",
        "nested-array",
        "scalar-then-object",
        "array-in-column",
    ],
)
def test_predictions_that_cannot_be_tensors_are_model_errors(predictions, message):
    with pytest.raises(ModelError, match=re.escape(message)) as raised:
        infer_response(MODEL, None, predictions)
    assert raised.value.code == "model_error"


# --- metadata and errors --------------------------------------------------------------


def test_model_metadata_describes_every_prototype_column():
    assert model_metadata(MODEL) == {
        "name": "iris",
        "versions": ["1.2"],
        "platform": "R",
        "inputs": [
            {"name": "x", "datatype": "FP64", "shape": [-1]},
            {"name": "n", "datatype": "INT32", "shape": [-1]},
            {"name": "b", "datatype": "BOOL", "shape": [-1]},
            {"name": "s", "datatype": "BYTES", "shape": [-1]},
            {"name": "f", "datatype": "BYTES", "shape": [-1], "parameters": {"levels": ["a", "b"]}},
            {
                "name": "o",
                "datatype": "BYTES",
                "shape": [-1],
                "parameters": {"levels": ["lo", "mid", "hi"]},
            },
            {"name": "z", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [],
    }


def test_model_metadata_of_an_unchecked_unversioned_model():
    assert model_metadata(UNVERSIONED) == {
        "name": "free",
        "versions": [],
        "platform": "R",
        "inputs": [],
        "outputs": [],
    }


@pytest.mark.parametrize(
    "message",
    ["input 'x': shape [2, 2] is not a column", "", "model 'other' is not served here"],
    ids=["bad-request", "empty", "unknown-model"],
)
def test_v2_error_is_the_specification_shape(message):
    assert v2_error(message) == {"error": message}
