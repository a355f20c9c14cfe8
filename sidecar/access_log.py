"""The access line: one JSON log record per HTTP request, built from plain fields.

The only per-request logging on the hot path; the JSON formatting happens in the log
handler (r_scorer.logs). Never logs headers or bodies (credentials live there).
"""

from __future__ import annotations

from time import monotonic

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from sidecar.app import ARRIVAL


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        # uvloop's loop clock (what aiohttp measures `time` with) ticks in milliseconds;
        # the request context's own monotonic arrival time is finer.
        arrival = request.get(ARRIVAL)
        if arrival is not None:
            time = monotonic() - arrival
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
