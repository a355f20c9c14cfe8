"""The access line: one JSON object per HTTP request on stderr, in the shape of every
other rscore log line (time, level, logger, message, and the request's fields).

The only per-request logging on the hot path, so it is written directly with orjson:
through the logging machinery it cost a fifth of the sidecar's CPU under load. Lines
are buffered and written together at most `FLUSH_DELAY_S` after the first of them (or
at once past `FLUSH_BYTES`): one write and flush per request was a system call per
request. `flush()` writes what is buffered; the server calls it on exit (after the
drain), and so does `atexit`, so no line of an answered request is lost on shutdown.
Never logs headers or bodies (credentials live there).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
from datetime import UTC, datetime
from time import monotonic

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from rscore.sidecar.app import ARRIVAL

FLUSH_DELAY_S = 0.05  # how late a line may reach stderr: far below any log shipper's tick
FLUSH_BYTES = 64 * 1024  # a burst is written at once past this


class _Lines:
    """The access lines not yet written, shared by every connection's logger (aiohttp
    makes one logger per connection)."""

    def __init__(self) -> None:
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, line: bytes) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a caller outside aiohttp): write at once
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_DELAY_S, self.flush)

    def flush(self) -> None:
        """Write every buffered line to stderr now (the stderr of this moment: tests
        capture it by swapping sys.stderr)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        self._size = 0
        try:
            sys.stderr.buffer.write(data)
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or gone: nowhere left to log
            pass


_LINES = _Lines()
flush = _LINES.flush
atexit.register(flush)


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        # uvloop's loop clock (what aiohttp measures `time` with) ticks in milliseconds;
        # the request context's own monotonic arrival time is finer.
        arrival = request.get(ARRIVAL)
        if arrival is not None:
            time = monotonic() - arrival
        method, path, status = request.method, request.path, response.status
        _LINES.add(
            orjson.dumps(
                {
                    "level": "INFO",
                    "logger": self.logger.name,
                    "message": f"{method} {path} {status}",
                    "request_id": response.headers.get("x-request-id"),
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(time * 1000, 3),
                    "remote": request.remote,
                    "time": datetime.now(UTC).isoformat(),
                },
                option=orjson.OPT_APPEND_NEWLINE,
            )
        )
