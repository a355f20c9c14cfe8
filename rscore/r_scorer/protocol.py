"""The worker protocol: how the sidecar and the R workers talk, over one Unix socket.

Transport. The sidecar side (`rscore.r_scorer.pool`) listens on a Unix stream socket, e.g.
`/run/rscore/workers.sock` on an emptyDir shared by the pod's two containers. Every R
worker process connects to it, so the sidecar discovers workers as they come (and a
restarted worker simply connects again); neither side needs to start first.

Framing. Each message is a 4-byte big-endian unsigned length, then that many bytes of
one JSON object (orjson). Frames over `MAX_FRAME_BYTES` are a protocol error.

Binary column frame. A score request whose numeric columns are numpy arrays (long
columns are: `prototype.COLUMNAR_ROWS`) carries them as raw bytes after its JSON, never
as JSON numbers: the body is a 0x00 byte (JSON never starts so), the JSON's 4-byte
big-endian length, the JSON, then each such column's values as little-endian float64
in column order (NaN is NA); in the JSON such a column's values are `{"float64": n}`.
Encoding 100,000 rows x 4 columns this way takes ~1 ms where JSON took 11 ms, and the
worker reads the numbers without parsing them.

Answers as JSON text. An answer of `JSON_REPLY_ROWS` predictions or more carries them
the same way: a 0x00 byte, the 4-byte length of the reply's JSON, the JSON (where
`"predictions"` is `{"json": <bytes>, "count": <rows>}`), then the predictions' own JSON
array, as the worker wrote it. The sidecar never parses it: it goes into the HTTP
response as it is (`JsonArray`; fan-out joins chunks' arrays as text). 100,000 labels
cost the sidecar's event loop ~8 ms to decode and encode again before.

Conversation. On connecting, the worker sends `hello` (with its slot and the number of
slots its supervisor runs, so the sidecar knows when all are there); then it answers one request at
a time, strictly in turn (the sidecar never sends a second request before the answer):

    worker -> sidecar  {"op": "hello", "protocol": 1,
                        "worker": {"slot": 0, "of": 2, "pid": 4242, "generation": 1},
                        "model": {"name", "version", "batchable", "splittable", "packages",
                                  "prototype"}}
    sidecar -> worker  {"op": "score", "id": 7, "nrows": 2, "timeout_s": 4.9,
                        "columns": [["wt", "numeric", [2.5, 3.1]], ["f", "factor", [1, 2]]]}
    worker -> sidecar  {"id": 7, "ok": true, "predictions": [...], "r_seconds": 0.00046}
                       (`JSON_REPLY_ROWS` predictions or more: as JSON text, see above)
                    or {"id": 7, "ok": false, "error": {"code": "model_error", "message": "..."}}

`columns` are already coerced to the prototype (`prototype.coerce`): factor columns are
1-based codes into the worker's own training levels, null is NA. `timeout_s` (optional)
is the request's remaining budget: a worker still inside R `WATCHDOG_GRACE_S` after it
exits at once, so its supervisor restarts it. An answer with `"last": true` is the
worker's final one (it recycles after a number of requests): the sidecar sends it
nothing more and the worker closes the connection.

Pure: framing and message shapes only, no sockets.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from rscore.r_scorer.errors import ProtocolError
from rscore.r_scorer.prototype import KINDS, TypedColumn, TypedFrame

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 256 * 1024 * 1024
WATCHDOG_GRACE_S = 0.5
BINARY = b"\x00"  # the first byte of a body with raw blocks after its JSON
_FLOAT64 = np.dtype("<f8")
# An answer this long goes as JSON text the sidecar passes on unparsed (`JsonArray`);
# a shorter one as plain JSON, which a merged batch's split needs parsed anyway.
JSON_REPLY_ROWS = 1024


@dataclass(frozen=True, slots=True)
class JsonArray:
    """Predictions as the JSON text of one array (`[...]`, no whitespace around), as the
    worker wrote them: passed on into the response without being parsed."""

    text: bytes
    count: int  # how many predictions (rows) the array holds

    def values(self) -> list[Any]:
        """The predictions as Python values (a merged batch's split, V2's tensors)."""
        values: list[Any] = orjson.loads(self.text)
        return values

    @classmethod
    def join(cls, parts: Sequence[JsonArray]) -> JsonArray:
        """One array of every part's predictions, in order, joined as text."""
        inner = [part.text[1:-1] for part in parts if part.count]
        return cls(b"[" + b",".join(inner) + b"]", sum(part.count for part in parts))


Predictions = list[Any] | JsonArray  # one answer's predictions, in row order


def prediction_list(predictions: Predictions) -> list[Any]:
    """The predictions as a list of Python values (parsed if they came as text)."""
    return predictions.values() if isinstance(predictions, JsonArray) else predictions


def prediction_json(predictions: Predictions) -> Any:
    """The predictions as orjson writes them: a list, or the text as a Fragment."""
    if isinstance(predictions, JsonArray):
        return orjson.Fragment(predictions.text)
    return predictions


def encode(message: dict[str, Any]) -> bytes:
    """One framed message; a score request's numpy columns go as raw bytes, and an
    answer's JsonArray as its text (see above)."""
    columns = message.get("columns")
    if columns and any(isinstance(column[2], np.ndarray) for column in columns):
        return _encode_with_blocks(message, columns)
    predictions = message.get("predictions")
    if isinstance(predictions, JsonArray):
        return _encode_json_reply(message, predictions)
    body = orjson.dumps(message)
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(f"message of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return HEADER.pack(len(body)) + body


def _encode_with_blocks(message: dict[str, Any], columns: list[list[Any]]) -> bytes:
    blocks: list[np.ndarray] = []
    described = []
    for name, kind, values in columns:
        if isinstance(values, np.ndarray):
            blocks.append(np.ascontiguousarray(values, dtype=_FLOAT64))
            described.append([name, kind, {"float64": len(values)}])
        else:
            described.append([name, kind, values])
    head = orjson.dumps({**message, "columns": described})
    size = 1 + HEADER.size + len(head) + sum(block.nbytes for block in blocks)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"message of {size} bytes exceeds {MAX_FRAME_BYTES}")
    parts = [HEADER.pack(size), BINARY, HEADER.pack(len(head)), head]
    return b"".join([*parts, *(block.data.cast("B") for block in blocks)])


def _encode_json_reply(message: dict[str, Any], predictions: JsonArray) -> bytes:
    described = {"json": len(predictions.text), "count": predictions.count}
    head = orjson.dumps({**message, "predictions": described})
    size = 1 + HEADER.size + len(head) + len(predictions.text)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"message of {size} bytes exceeds {MAX_FRAME_BYTES}")
    return b"".join([HEADER.pack(size), BINARY, HEADER.pack(len(head)), head, predictions.text])


def frame_length(header: bytes) -> int:
    """The body length announced by a 4-byte header."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(f"peer announced a frame of {length} bytes (limit {MAX_FRAME_BYTES})")
    return length


def decode(body: bytes | memoryview) -> dict[str, Any]:
    """A message body; raises ProtocolError if it is not a JSON object (or a binary
    column frame whose blocks do not add up)."""
    if body[:1] == BINARY:
        return _decode_with_blocks(body)
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    return message


def _decode_with_blocks(body: bytes | memoryview) -> dict[str, Any]:
    if len(body) < 1 + HEADER.size:
        raise ProtocolError("binary frame too short for its JSON length")
    (head_length,) = HEADER.unpack_from(body, 1)
    offset = 1 + HEADER.size + head_length
    message = decode(memoryview(body)[1 + HEADER.size : offset])
    if isinstance(message.get("predictions"), dict):
        return _decode_json_reply(message, body, offset)
    columns = message.get("columns")
    if not isinstance(columns, list):
        raise ProtocolError("binary frame without columns or predictions")
    for column in columns:
        values = column[2] if isinstance(column, list) and len(column) == 3 else None
        if not isinstance(values, dict):
            continue
        count = values.get("float64")
        if type(count) is not int or count < 0 or offset + 8 * count > len(body):
            raise ProtocolError("binary frame: a column's block is not within the frame")
        column[2] = np.frombuffer(body, dtype=_FLOAT64, count=count, offset=offset)
        offset += 8 * count
    if offset != len(body):
        raise ProtocolError(f"binary frame has {len(body) - offset} bytes after its blocks")
    return message


def _decode_json_reply(
    message: dict[str, Any], body: bytes | memoryview, offset: int
) -> dict[str, Any]:
    described = message["predictions"]
    size, count = described.get("json"), described.get("count")
    if type(size) is not int or type(count) is not int or size < 2 or count < 0:
        raise ProtocolError("binary frame: predictions need a json size >= 2 and a count")
    if offset + size != len(body):
        raise ProtocolError("binary frame: the predictions' JSON does not fill the frame")
    text = bytes(body[offset:])
    if text[:1] != b"[" or text[-1:] != b"]":
        raise ProtocolError("binary frame: the predictions' JSON is not an array")
    message["predictions"] = JsonArray(text, count)
    return message


def score_request(
    request_id: int, frame: TypedFrame, timeout_s: float | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "op": "score",
        "id": request_id,
        "nrows": frame.nrows,
        "columns": [[column.name, column.kind, column.values] for column in frame.columns],
    }
    if timeout_s is not None:
        message["timeout_s"] = timeout_s
    return message


def frame_of_request(message: dict[str, Any]) -> TypedFrame:
    """The TypedFrame a `score` request carries."""
    nrows = message.get("nrows")
    columns = message.get("columns")
    if type(nrows) is not int or nrows < 0 or not isinstance(columns, list):
        raise ProtocolError("malformed score request: needs nrows >= 0 and a list of columns")
    typed = []
    for column in columns:
        if not (
            isinstance(column, list)
            and len(column) == 3
            and isinstance(column[0], str)
            and column[1] in KINDS
            and isinstance(column[2], list | np.ndarray)
            and len(column[2]) == nrows
        ):
            raise ProtocolError(
                "malformed score request: each column must be [name, kind, values] "
                "with nrows values"
            )
        typed.append(TypedColumn(column[0], column[1], column[2]))
    return TypedFrame(tuple(typed), nrows)


def hello(
    slot: int, pid: int, generation: int, model: dict[str, Any], *, of: int = 1
) -> dict[str, Any]:
    return {
        "op": "hello",
        "protocol": PROTOCOL_VERSION,
        "worker": {"slot": slot, "of": of, "pid": pid, "generation": generation},
        "model": model,
    }


def ok_reply(
    request_id: int, predictions: Predictions, r_seconds: float, *, last: bool = False
) -> dict[str, Any]:
    reply = {"id": request_id, "ok": True, "predictions": predictions, "r_seconds": r_seconds}
    if last:
        reply["last"] = True
    return reply


def error_reply(request_id: int, code: str, message: str, *, last: bool = False) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }
    if last:
        reply["last"] = True
    return reply
