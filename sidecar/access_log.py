"""The access line: one JSON log record per HTTP request, built from plain fields.

The only per-request logging on the hot path; the JSON formatting happens in the log
handler (r_scorer.logs). Never logs headers or bodies (credentials live there).
"""

from __future__ import annotations

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %d",
            request.method,
            request.path,
            response.status,
            extra={
                "request_id": response.headers.get("x-request-id"),
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
                "remote": request.remote,
            },
        )
