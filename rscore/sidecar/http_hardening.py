"""What aiohttp says on its own: requests its parser refuses, and the `Server` header.

aiohttp's own 400 for an unparseable request quotes the offending bytes (an
`Authorization` header with a stray control character, say) in the body and in an
ERROR log with a traceback. `harden_parser_errors()` makes those answers the
contract's JSON `bad_request` with an `x-request-id`, and logs one line naming the
kind of error only. It replaces one method of aiohttp's RequestHandler, once, for
this process: aiohttp offers no hook for errors raised before the application runs.

aiohttp sends `Server: Python/3.x aiohttp/3.y` on every response, which tells a
scanner which CVEs to try. `name_the_server(app)` makes an application's responses say
`Server: rscore` (no version); the replaced error handler does the same for answers
given before any application runs.

Never echo or log the bytes of a refused request: they may hold a credential.
"""

from __future__ import annotations

import uuid
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from rscore.r_scorer.errors import BadRequest

SERVER_NAME = "rscore"

_original_handle_error = RequestHandler.handle_error


def _handle_error(
    self: RequestHandler,
    request: web.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    if status != HTTPStatus.BAD_REQUEST:
        answer = _original_handle_error(self, request, status, exc, message)
        answer.headers["Server"] = SERVER_NAME
        return answer
    kind = type(exc).__name__ if exc is not None else "BadRequest"
    self.logger.warning("refused a malformed HTTP request from %s (%s)", request.remote, kind)
    if request.writer.output_size > 0:  # as aiohttp: the response has begun, cannot answer
        raise ConnectionError("response already started; cannot send an error")
    error = BadRequest(f"malformed HTTP request ({kind}); the request was not read")
    response = web.Response(
        body=orjson.dumps(error.to_json()), status=400, content_type="application/json"
    )
    response.headers["x-request-id"] = uuid.uuid4().hex
    response.headers["Server"] = SERVER_NAME
    response.force_close()
    return response


def harden_parser_errors() -> None:
    """Install the replacement (idempotent)."""
    handler_class: Any = RequestHandler
    handler_class.handle_error = _handle_error


async def _server_header(_: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare runs after aiohttp's own default: this value wins.
    response.headers["Server"] = SERVER_NAME


def name_the_server(app: web.Application) -> None:
    """Make every response of `app` say `Server: rscore` instead of aiohttp's version."""
    if _server_header not in app.on_response_prepare:
        app.on_response_prepare.append(_server_header)
