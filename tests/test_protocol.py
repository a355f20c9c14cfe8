"""The worker protocol's framing and messages; the supervisor's pure helpers."""

import signal

import pytest

from rscore.r_scorer.errors import (
    ERRORS_BY_CODE,
    BadRequest,
    BundleError,
    ModelError,
    ProtocolError,
    SchemaMismatch,
    ScoringError,
    WorkerCrashed,
    error_from_json,
)
from rscore.r_scorer.protocol import (
    HEADER,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    decode,
    encode,
    error_reply,
    frame_length,
    frame_of_request,
    hello,
    ok_reply,
    score_request,
)
from rscore.r_scorer.prototype import TypedColumn, TypedFrame
from rscore.r_scorer.supervisor import MAX_BACKOFF_S, describe_exit, restart_delay

FRAME = TypedFrame(
    (
        TypedColumn("wt", "numeric", [2.5, 3.1, None]),
        TypedColumn("f", "factor", [1, 2, None]),
        TypedColumn("am", "logical", [True, None, False]),
        TypedColumn("s", "character", ["a", "é", None]),
        TypedColumn("n", "integer", [1, -2147483647, 2147483647]),
    ),
    3,
)


def unframe(data):
    """Split one encoded frame into its body, checking the header on the way."""
    length = frame_length(data[: HEADER.size])
    body = data[HEADER.size :]
    assert len(body) == length
    return decode(body)


def test_header_is_four_bytes_big_endian():
    assert HEADER.size == 4
    assert encode({}) == b"\x00\x00\x00\x02{}"
    assert frame_length(b"\x00\x00\x01\x02") == 258
    assert MAX_FRAME_BYTES == 256 * 1024 * 1024


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"op": "hello", "protocol": 1},
        {"id": 7, "ok": True, "predictions": [1.5, None, "a", {"k": [1, 2]}], "r_seconds": 4e-4},
        {"text": "ünïcödé ✓", "nested": {"a": [[], {}]}},
        {"big": list(range(10000))},
    ],
    ids=["empty", "hello", "reply", "unicode", "big"],
)
def test_encode_decode_round_trip(message):
    data = encode(message)
    assert data[: HEADER.size] == HEADER.pack(len(data) - HEADER.size)
    assert unframe(data) == message


def test_frames_concatenate_on_a_stream():
    messages = [{"id": 1}, {"id": 2, "x": "yy"}, {}]
    stream = b"".join(encode(message) for message in messages)
    out = []
    while stream:
        length = frame_length(stream[:4])
        out.append(decode(stream[4 : 4 + length]))
        stream = stream[4 + length :]
    assert out == messages


@pytest.mark.parametrize(
    ("length", "ok"),
    [
        (0, True),
        (1, True),
        (MAX_FRAME_BYTES, True),
        (MAX_FRAME_BYTES + 1, False),
        (2**32 - 1, False),
    ],
    ids=["zero", "one", "at-limit", "over-limit", "max-u32"],
)
def test_frame_length_limit(length, ok):
    header = HEADER.pack(length)
    if ok:
        assert frame_length(header) == length
    else:
        with pytest.raises(ProtocolError) as caught:
            frame_length(header)
        assert caught.value.message == (
            f"peer announced a frame of {length} bytes (limit {MAX_FRAME_BYTES})"
        )
        assert caught.value.code == "protocol_error"


def test_encode_rejects_an_oversize_message():
    with pytest.raises(ProtocolError, match=f"exceeds {MAX_FRAME_BYTES}$"):
        encode({"b": "x" * MAX_FRAME_BYTES})


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "frame is not JSON"),
        (b"{", "frame is not JSON"),
        (b"\xff", "frame is not JSON"),
        (b"{'a': 1}", "frame is not JSON"),
        (b"[]", "frame is not a JSON object"),
        (b"[{}]", "frame is not a JSON object"),
        (b"null", "frame is not a JSON object"),
        (b"1", "frame is not a JSON object"),
        (b'"op"', "frame is not a JSON object"),
        (b"true", "frame is not a JSON object"),
    ],
    ids=[
        "empty",
        "truncated",
        "invalid-utf8",
        "single-quotes",
        "array",
        "array-of-object",
        "null",
        "number",
        "string",
        "boolean",
    ],
)
def test_decode_rejects_non_objects(body, fragment):
    with pytest.raises(ProtocolError) as caught:
        decode(body)
    assert caught.value.message.startswith(fragment)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("timeout_s", [None, 4.9, 0.0], ids=["no-timeout", "timeout", "zero"])
@pytest.mark.parametrize(
    "frame",
    [FRAME, TypedFrame((), 0), TypedFrame((TypedColumn("x", "numeric", []),), 0)],
    ids=["five-columns", "no-columns", "no-rows"],
)
def test_score_request_round_trip(frame, timeout_s):
    message = score_request(7, frame, timeout_s)
    assert message["op"] == "score"
    assert message["id"] == 7
    assert message["nrows"] == frame.nrows
    if timeout_s is None:
        assert "timeout_s" not in message
    else:
        assert message["timeout_s"] == timeout_s
    received = unframe(encode(message))
    assert received == message
    assert frame_of_request(received) == frame


def test_score_request_shape():
    frame = TypedFrame(
        (TypedColumn("wt", "numeric", [2.5, 3.1]), TypedColumn("f", "factor", [1, 2])), 2
    )
    assert score_request(7, frame, 4.9) == {
        "op": "score",
        "id": 7,
        "nrows": 2,
        "timeout_s": 4.9,
        "columns": [["wt", "numeric", [2.5, 3.1]], ["f", "factor", [1, 2]]],
    }


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"op": "score", "id": 1, "columns": []}, "nrows >= 0 and a list of columns"),
        ({"op": "score", "id": 1, "nrows": 1}, "nrows >= 0 and a list of columns"),
        ({"nrows": "two", "columns": []}, "nrows >= 0"),
        ({"nrows": None, "columns": []}, "nrows >= 0"),
        ({"nrows": 1, "columns": None}, "a list of columns"),
        ({"nrows": 1, "columns": [["x", "numeric"]]}, "[name, kind, values]"),
        ({"nrows": 1, "columns": [["x", "numeric", [1], "extra"]]}, "[name, kind, values]"),
        ({"nrows": 1, "columns": [5]}, "[name, kind, values]"),
        ({"nrows": 1, "columns": [["x", "numeric", None]]}, "[name, kind, values]"),
        ({"nrows": 1, "columns": [["x", "numeric", 3]]}, "[name, kind, values]"),
        ({"nrows": 2, "columns": [["x", "numeric", [1.0]]]}, "with nrows values"),
        (
            {"nrows": 1, "columns": [["x", "numeric", [1.0]], ["y", "numeric", [1.0, 2.0]]]},
            "with nrows values",
        ),
        ({"nrows": 0, "columns": [["x", "numeric", [1.0]]]}, "with nrows values"),
    ],
    ids=[
        "no-nrows",
        "no-columns",
        "nrows-word",
        "nrows-null",
        "columns-null",
        "column-of-two",
        "column-of-four",
        "column-number",
        "values-null",
        "values-number",
        "short-column",
        "one-long-column",
        "zero-rows-with-values",
    ],
)
def test_malformed_score_requests(message, fragment):
    with pytest.raises(ProtocolError) as caught:
        frame_of_request(message)
    assert caught.value.message.startswith("malformed score request: ")
    assert fragment in caught.value.message
    assert caught.value.__cause__ is None


@pytest.mark.parametrize(
    "message",
    [
        {"nrows": 1, "columns": ["abc"]},
        {"nrows": 2, "columns": [["x", "numeric", "ab"]]},
        {"nrows": 1, "columns": [["x", "numeric", {"a": 1}]]},
        {"nrows": -1, "columns": []},
    ],
    ids=["column-is-a-string", "values-is-a-string", "values-is-an-object", "negative-nrows"],
)
def test_score_requests_with_non_list_parts_are_malformed(message):
    with pytest.raises(ProtocolError, match="malformed score request"):
        frame_of_request(message)


def test_hello():
    model = {"name": "m", "version": "1", "batchable": True, "packages": [], "prototype": {}}
    message = hello(0, 4242, 1, model, of=3)
    assert message == {
        "op": "hello",
        "protocol": PROTOCOL_VERSION,
        "worker": {"slot": 0, "of": 3, "pid": 4242, "generation": 1},
        "model": model,
    }
    assert PROTOCOL_VERSION == 1
    assert unframe(encode(message)) == message


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (False, {"id": 7, "ok": True, "predictions": [1.5, None], "r_seconds": 0.00046}),
        (
            True,
            {"id": 7, "ok": True, "predictions": [1.5, None], "r_seconds": 0.00046, "last": True},
        ),
    ],
    ids=["not-last", "last"],
)
def test_ok_reply(last, expected):
    reply = ok_reply(7, [1.5, None], 0.00046, last=last)
    assert reply == expected
    assert unframe(encode(reply)) == expected


def test_ok_reply_default_is_not_last():
    assert "last" not in ok_reply(1, [], 0.0)
    assert "last" not in error_reply(1, "model_error", "boom")


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (
            False,
            {"id": 3, "ok": False, "error": {"code": "model_error", "message": "object 'x'"}},
        ),
        (
            True,
            {
                "id": 3,
                "ok": False,
                "error": {"code": "model_error", "message": "object 'x'"},
                "last": True,
            },
        ),
    ],
    ids=["not-last", "last"],
)
def test_error_reply(last, expected):
    reply = error_reply(3, "model_error", "object 'x'", last=last)
    assert reply == expected
    assert unframe(encode(reply)) == expected


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("bad_request", BadRequest),
        ("schema_mismatch", SchemaMismatch),
        ("model_error", ModelError),
        ("worker_crashed", WorkerCrashed),
        ("bundle_error", BundleError),
        ("protocol_error", ProtocolError),
        ("internal_error", ScoringError),
        ("no_such_code", ScoringError),
        ("", ScoringError),
    ],
    ids=[
        "bad_request",
        "schema_mismatch",
        "model_error",
        "worker_crashed",
        "bundle_error",
        "protocol_error",
        "internal_error",
        "unknown",
        "empty",
    ],
)
def test_error_from_json(code, cls):
    error = error_from_json(code, "the message")
    assert type(error) is cls
    assert error.message == "the message"
    assert str(error) == "the message"
    expected_code = code if cls is not ScoringError else "internal_error"
    assert error.code == expected_code
    assert error.to_json() == {"error": {"code": expected_code, "message": "the message"}}


def test_errors_by_code_is_complete():
    assert dict(ERRORS_BY_CODE) == {
        "bad_request": BadRequest,
        "schema_mismatch": SchemaMismatch,
        "model_error": ModelError,
        "worker_crashed": WorkerCrashed,
        "bundle_error": BundleError,
        "protocol_error": ProtocolError,
    }
    assert all(issubclass(cls, ScoringError) for cls in ERRORS_BY_CODE.values())


def test_error_reply_round_trips_into_an_exception():
    reply = unframe(encode(error_reply(9, "schema_mismatch", "column 'x'")))
    error = error_from_json(reply["error"]["code"], reply["error"]["message"])
    assert isinstance(error, SchemaMismatch)
    assert error.message == "column 'x'"


@pytest.mark.parametrize(
    ("quick_deaths", "delay"),
    [
        (-5, 0.0),
        (-1, 0.0),
        (0, 0.0),
        (1, 0.5),
        (2, 1.0),
        (3, 2.0),
        (4, 4.0),
        (5, 8.0),
        (6, 16.0),
        (7, 30.0),
        (8, 30.0),
        (50, 30.0),
        (1024, 30.0),
    ],
    ids=[
        "negative",
        "minus-one",
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven-capped",
        "eight-capped",
        "fifty-capped",
        "1024-capped",
    ],
)
def test_restart_delay(quick_deaths, delay):
    assert restart_delay(quick_deaths) == delay
    assert isinstance(restart_delay(quick_deaths), float)


def test_max_backoff_is_thirty_seconds():
    assert MAX_BACKOFF_S == 30.0


@pytest.mark.parametrize("quick_deaths", [1025, 10_000], ids=["1025", "10000"])
def test_restart_delay_stays_capped_for_any_count(quick_deaths):
    assert restart_delay(quick_deaths) == MAX_BACKOFF_S


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        (0, "exited cleanly (recycled, or drained)"),
        (3, "failed to load the bundle"),
        (1, "exited with status 1"),
        (2, "exited with status 2"),
        (137, "exited with status 137"),
        (-signal.SIGKILL, "killed by SIGKILL"),
        (-signal.SIGTERM, "killed by SIGTERM"),
        (-signal.SIGSEGV, "killed by SIGSEGV"),
        (-signal.SIGABRT, "killed by SIGABRT"),
        (-signal.SIGALRM, "ended by its watchdog (a request stayed in R past its deadline)"),
        (-999, "killed by signal 999"),
    ],
    ids=[
        "recycled",
        "load-failed",
        "status-1",
        "status-2",
        "status-137",
        "sigkill",
        "sigterm",
        "sigsegv",
        "sigabrt",
        "watchdog",
        "unknown-signal",
    ],
)
def test_describe_exit(returncode, text):
    assert describe_exit(returncode) == text
