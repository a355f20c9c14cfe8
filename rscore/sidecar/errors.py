"""Errors only the sidecar raises, and the one place codes become HTTP statuses.

Everything below the HTTP edge raises a `ScoringError` with a contract code; the
handlers turn it into a status with `status_of()` and a JSON body, nowhere else.
"""

from __future__ import annotations

from rscore.r_scorer.errors import ScoringError


class Overloaded(ScoringError):
    """The queue for the workers is full."""

    code = "overloaded"


class Unavailable(ScoringError):
    """Not ready (no worker yet) or draining after SIGTERM."""

    code = "unavailable"


class TimedOut(ScoringError):
    """Queue wait plus scoring ran over the request timeout."""

    code = "timeout"


class RequestTimedOut(ScoringError):
    """The client did not send its request (header or body) within its deadline."""

    code = "request_timeout"


class UnsupportedMediaType(ScoringError):
    code = "unsupported_media_type"


class NotFound(ScoringError):
    code = "not_found"


class MethodNotAllowed(ScoringError):
    code = "method_not_allowed"


STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "schema_mismatch": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "too_large": 413,
    "unsupported_media_type": 415,
    "overloaded": 429,
    "model_error": 500,
    "worker_crashed": 502,
    "unavailable": 503,
    "timeout": 504,
}


def status_of(error: ScoringError) -> int:
    """The HTTP status for an error; anything unexpected is a 500."""
    return STATUS_BY_CODE.get(error.code, 500)
